"""The per-image files of ``predict``: overlay, mask, raw map and the report's thumbnail, written
so that a file never exists without its table row.

Each is written under a temporary name (:func:`write_images`), the row is appended to the
table, and only then are they renamed into place; an earlier run's files of the same names
are removed first (:func:`remove_outputs`). A failure of one image's files (out of memory, a
name the file system refuses) is that image's :class:`ImageOutputError`; a full or read-only
disk stops the run with :class:`~tipsomaly.errors.OutputError`.
"""

from __future__ import annotations

import contextlib
import errno
import logging
from dataclasses import dataclass
from pathlib import Path

from ..data.images import ImageLoadError, load_image
from ..errors import OutputError
from ..method.prediction import Prediction
from ..report.overlay import DEFAULT_ALPHA, save_map, save_mask, save_overlay
from ..report.predict_page import THUMBS
from ..report.results import printable
from ..report.thumbs import SUFFIX, save_thumbnail, thumbnail

logger = logging.getLogger(__name__)

__all__ = [
    "MAP_DIR",
    "MASK_DIR",
    "OUTPUT_KINDS",
    "OVERLAY_DIR",
    "ImageOutputError",
    "ImageOutputs",
    "discard",
    "remove_outputs",
    "tmp_name",
    "write_images",
]

OVERLAY_DIR, MASK_DIR, MAP_DIR = "overlays", "masks", "maps"
OUTPUT_KINDS = ((OVERLAY_DIR, ".png"), (MASK_DIR, ".png"), (MAP_DIR, ".npy"), (THUMBS, SUFFIX))
# errors that no other image would escape: the run stops with OutputError
DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


class ImageOutputError(Exception):
    """One image's files could not be written (its row becomes an error row)."""


@dataclass(frozen=True)
class ImageOutputs:
    """Which files a run writes for each image (raw maps, overlays, the report's thumbnail)
    and how its overlays look (``scale``, ``alpha``; defect ``boxes`` drawn on them)."""

    save_maps: bool = False
    overlays: bool = True
    scale: str = "fixed"
    alpha: float = DEFAULT_ALPHA
    boxes: bool = True
    thumbs: bool = False


def tmp_name(final: Path) -> Path:
    return final.with_name(f".{final.stem}.tmp{final.suffix}")


def remove_outputs(out: Path, name: str) -> None:
    """Delete an earlier run's overlay, mask and map of ``name`` (and leftover temp files)."""
    for folder, suffix in OUTPUT_KINDS:
        final = out / folder / f"{name}{suffix}"
        for path in (final, tmp_name(final)):
            try:
                path.unlink(missing_ok=True)
            except IsADirectoryError:
                pass
            except OSError as exc:
                raise OutputError(path, exc) from None


def discard(written: list[tuple[Path, Path]]) -> None:
    for tmp, _final in written:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def write_images(
    pred: Prediction,
    out: Path,
    name: str,
    files: ImageOutputs,
    defects: list[dict] | None = None,
    max_pixels: int | None = None,
) -> list[tuple[Path, Path]]:
    """The per-image ``files`` of one scored image (overlay with its ``defects``' boxes, mask
    at its pixel threshold inside its ROI, raw map, at original size), written under
    temporary names: returns ``(temporary, final)`` pairs. The image is read again for the
    overlay and the report's thumbnail (``max_pixels``: the limit it was read with).

    Raises:
        ImageOutputError: this image's files cannot be written (out of memory, a name the
            file system refuses); nothing of it is left.
        OutputError: the disk is full or read-only.
    """
    amap, threshold, scale = pred.anomaly_map_original, pred.pixel_threshold, files.scale
    assert amap is not None
    logger.debug("%s: image score %.4f", printable(pred.source), pred.image_score)
    written: list[tuple[Path, Path]] = []
    boxes = (defects or []) if files.boxes else []
    final = out
    try:
        if files.save_maps:
            final = out / MAP_DIR / f"{name}.npy"
            save_map(tmp_name(final), amap)
            written.append((tmp_name(final), final))
        if threshold is not None:
            final = out / MASK_DIR / f"{name}.png"
            save_mask(tmp_name(final), amap, threshold, roi=pred.roi)
            written.append((tmp_name(final), final))
        if files.overlays or files.thumbs:
            try:
                image = load_image(pred.source, max_pixels=max_pixels)
            except ImageLoadError as exc:  # changed or removed since it was scored
                logger.warning("no overlay for %s: %s", printable(pred.source), printable(exc))
                image = None
            span = None
            if scale == "threshold":
                scale = "fixed"
                if threshold is not None and threshold > 0:
                    span = (0.0, 2.0 * float(threshold))
            look = {"alpha": files.alpha, "scale": scale, "span": span}
            if image is not None and files.overlays:
                final = out / OVERLAY_DIR / f"{name}.png"
                save_overlay(
                    tmp_name(final),
                    image,
                    amap,
                    boxes=[tuple(d["bbox"]) for d in boxes],
                    labels=[f"#{d['id']} {d['peak']:.2f}" for d in boxes],
                    **look,
                )
                written.append((tmp_name(final), final))
            if image is not None and files.thumbs:
                final = out / THUMBS / f"{name}{SUFFIX}"
                # the report shows every defect's box, also with --no-boxes
                every = [tuple(d["bbox"]) for d in defects or []]
                small = thumbnail(image, amap, boxes=every, **look)
                save_thumbnail(tmp_name(final), small)
                written.append((tmp_name(final), final))
    except BaseException as exc:
        discard([*written, (tmp_name(final), final)])
        if isinstance(exc, OSError) and exc.errno in DISK_ERRNOS:
            raise OutputError(final, exc) from None
        if isinstance(exc, MemoryError):
            raise ImageOutputError(f"cannot write {final}: out of memory") from None
        if isinstance(exc, (OSError, ValueError)):
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
            raise ImageOutputError(f"cannot write {final}: {reason}") from None
        raise
    return written
