"""Regions of interest: which pixels of an image are inspected (white) and which are ignored.

An ROI mask is an image file (any mode :func:`~tipsomaly.data.images.load_image` reads):
pixels of luma >= 128 are inspected, darker ones ignored (serial numbers, fixtures, background
that is *supposed* to vary). One mask may serve every image (``predict --roi``), or each image
has its own in a folder (``--roi-dir``), found by name (:func:`find_roi`).

A mask of another size than its image is resized to it (:func:`fit_roi`: bilinear on 0/255,
then >= 128, the rule of the ground-truth masks) and the caller notes it. Numpy and Pillow only
(no torch).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import TipsomalyError
from .images import IMAGE_EXTENSIONS, ImageLoadError, load_image
from .names import display_path, relative_name

logger = logging.getLogger(__name__)

__all__ = [
    "RoiError",
    "RoiInput",
    "RoiLookup",
    "as_roi",
    "boxes_touching",
    "find_roi",
    "fit_roi",
    "load_roi",
    "read_roi",
    "roi_cells",
]

#: what an ROI can be given as: a mask file, a bool / 0-255 array (H, W), a PIL image
RoiInput = str | os.PathLike | np.ndarray | Image.Image


class RoiError(TipsomalyError, ValueError):
    """An ROI mask that cannot be used (unreadable, empty, ambiguous, not found)."""


def load_roi(path: str | os.PathLike) -> np.ndarray:
    """An ROI mask file → (H, W) bool, True = inspect (luma >= 128).

    Raises:
        ImageLoadError: the file cannot be read (named).
    """
    return as_roi(load_image(path))


def read_roi(roi: RoiInput) -> np.ndarray:
    """An ROI mask that must inspect something → (H, W) bool.

    Raises:
        RoiError: a file that cannot be read, or a mask without a white pixel (named).
    """
    try:
        mask = as_roi(roi)
    except ImageLoadError as exc:
        raise RoiError(f"ROI mask: {exc}") from None
    if not mask.any():
        shown = display_path(Path(roi)) if isinstance(roi, (str, os.PathLike)) else "given"
        raise RoiError(f"ROI mask {shown} has no white pixel: nothing to inspect")
    return mask


def as_roi(roi: RoiInput) -> np.ndarray:
    """Any :data:`RoiInput` → (H, W) bool, True = inspect.

    Arrays: bool as they are; numbers inspect where >= 128 (0/255 masks), or where > 0.5 when
    all values are in [0, 1] (0/1 and float masks). PIL images: luma >= 128.

    Raises:
        ImageLoadError: a file that cannot be read.
        RoiError: an array that is not (H, W).
    """
    if isinstance(roi, (str, os.PathLike)):
        return load_roi(roi)
    if isinstance(roi, Image.Image):
        from .images import to_rgb

        return np.asarray(to_rgb(roi).convert("L")) >= 128
    arr = np.asarray(roi)
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[..., :3].mean(axis=2) if arr.shape[2] > 1 else arr[..., 0]
    if arr.ndim != 2:
        raise RoiError(f"an ROI mask must be (H, W), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if arr.size and float(np.nanmax(arr)) <= 1.0:
        return arr > 0.5
    return arr >= 128


def fit_roi(roi: np.ndarray, image_hw: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """(h, w) bool ROI → (H, W) bool at the image's size, and whether it was resized.

    Resizing is bilinear on the 0/255 mask, then >= 128 (half-covered pixels are inspected).
    """
    h, w = (int(v) for v in image_hw)
    if roi.shape == (h, w):
        return roi, False
    im = Image.fromarray(roi.astype(np.uint8) * 255, mode="L")
    return np.asarray(im.resize((w, h), Image.Resampling.BILINEAR)) >= 128, True


def roi_cells(roi: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """(H, W) bool ROI → (gh·gw,) bool: the patch cells (of the image resized to the model
    input, a gh × gw grid) that count as inside the ROI.

    A cell counts when at least half of it is inside; when no cell is (an ROI smaller than half
    a cell), the cells with the largest share do. An empty ROI gives no cell.
    """
    gh, gw = grid
    im = Image.fromarray(roi.astype(np.float32), mode="F")
    share = np.asarray(im.resize((gw, gh), Image.Resampling.BOX), dtype=np.float32).reshape(-1)
    top = float(share.max()) if share.size else 0.0
    if top <= 0.0:
        return np.zeros(gh * gw, dtype=bool)
    return share >= min(0.5, top) - 1e-6


def boxes_touching(roi: np.ndarray, boxes: Sequence[tuple[int, int, int, int]]) -> list[int]:
    """Indices of the ``(y0, x0, y1, x1)`` boxes holding at least one ROI pixel."""
    return [i for i, (y0, x0, y1, x1) in enumerate(boxes) if roi[y0:y1, x0:x1].any()]


def find_roi(
    folder: str | os.PathLike,
    names: Sequence[str],
    listings: dict[Path, dict[str, list[Path]]] | None = None,
) -> Path | None:
    """The mask of an image in an ROI folder: ``folder/<name>.<ext>`` for the first of
    ``names`` (e.g. the image's output name ``a/x``, then its stem ``x``) that has one, with
    any image extension (:data:`~tipsomaly.data.images.IMAGE_EXTENSIONS`, either case).
    None when no name has one. ``listings``: a dict the caller keeps across calls, so each
    folder is listed once.

    Raises:
        RoiError: a name matches several files (``x.png`` and ``x.bmp``).
    """
    root = Path(folder)
    listings = {} if listings is None else listings
    for name in dict.fromkeys(names):
        base = root / name
        parent = base.parent
        if parent not in listings:
            by_stem: dict[str, list[Path]] = {}
            if parent.is_dir():
                for p in sorted(parent.iterdir()):
                    if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                        by_stem.setdefault(p.stem, []).append(p)
            listings[parent] = by_stem
        found = listings[parent].get(base.name, [])
        if len(found) > 1:
            shown = ", ".join(display_path(p.name) for p in found)
            raise RoiError(
                f"ROI folder {display_path(root)}: several masks for {display_path(name)} "
                f"({shown}); keep one"
            )
        if found:
            return found[0]
    return None


class RoiLookup:
    """The ROI of each image: one mask for every image (``roi``, read once), or one per image
    in ``roi_dir``, found by name (:meth:`find`; in a dataset, :meth:`source`: ``<roi_dir>/<path
    relative to root, no extension>.<ext>``, else ``<roi_dir>/<file stem>.<ext>``), each of its
    folders listed once; neither: no ROI."""

    def __init__(
        self,
        roi: str | os.PathLike | None = None,
        roi_dir: str | os.PathLike | None = None,
        root: str | os.PathLike = ".",
    ) -> None:
        self.roi, self.root = roi, Path(root)
        self.folder = None if roi_dir is None else Path(roi_dir)
        self._listings: dict[Path, dict[str, list[Path]]] = {}
        self._mask: np.ndarray | None = None  # ``roi``, read once
        self._resized: set = set()  # (mask shape, image shape) pairs already noted

    @property
    def active(self) -> bool:
        return self.roi is not None or self.folder is not None

    def find(self, names: Sequence[str], image: str | os.PathLike | None = None) -> Path:
        """The mask in ``roi_dir`` of the first of ``names`` that has one.

        Raises:
            RoiError: no mask for any name (the message names ``image`` when given), or a
                name with several masks.
        """
        assert self.folder is not None
        found = find_roi(self.folder, names, self._listings)
        if found is None:
            tried = " or ".join(f"{display_path(n)}.*" for n in dict.fromkeys(names))
            missing = f"no ROI mask for it in {display_path(self.folder)} (looked for {tried})"
            raise RoiError(missing if image is None else f"{display_path(Path(image))}: {missing}")
        return found

    def source(self, image_path: str | os.PathLike) -> np.ndarray | Path | None:
        """Where a dataset image's ROI is: the ``roi`` mask ((h, w) bool), its mask file in
        ``roi_dir``, or None without either.

        Raises:
            RoiError: no mask for the image (or several), or an ``roi`` that cannot be read.
        """
        if self.roi is not None:
            if self._mask is None:
                self._mask = read_roi(self.roi)
            return self._mask
        if self.folder is None:
            return None
        path = Path(image_path)
        relative = relative_name(path, self.root)
        return self.find([str(Path(relative).with_suffix("")), path.stem], image=path)

    def of(self, image_path: str | os.PathLike, image_hw: tuple[int, int]) -> np.ndarray:
        """A dataset image's ROI at its size ((H, W) bool; resized with a note, once per pair
        of sizes, when the mask's size differs), for images with a :meth:`source`.

        Raises:
            RoiError: see :meth:`source`; a mask that cannot be read or is empty.
        """
        source = self.source(image_path)
        assert source is not None
        roi = source if isinstance(source, np.ndarray) else read_roi(source)
        fitted, resized = fit_roi(roi, image_hw)
        if resized and (roi.shape, tuple(image_hw)) not in self._resized:
            self._resized.add((roi.shape, tuple(image_hw)))
            (h0, w0), (h, w) = roi.shape, image_hw
            shown = display_path(Path(image_path))
            logger.warning(
                "ROI mask of %dx%d px resized to the %dx%d image %s (w x h)", w0, h0, w, h, shown
            )
        return fitted
