"""What every layout builder shares: folder helpers, mask matching, entries, problems.

Masks are matched to images by file stem, case-insensitively, trying the suffixes
``_mask``, ``_label``, ``_segmentation``, ``_gt`` and none, with any of the extensions
``.png .bmp .tif .tiff .jpg .jpeg .gif`` (so ``000.png`` ↔ ``000_mask.png``, ``0002.PNG`` ↔
``0002_label.PNG``, ``ISIC_0000003.jpg`` ↔ ``ISIC_0000003_Segmentation.png``, BTAD's mixed
``.bmp``/``.png``). The reference scripts (AnomalyCLIP / AdaCLIP ``generate_dataset_json``)
pair images and masks by sorted position instead, which silently mispairs when a file is
missing; here an anomalous image whose defect folder has masks but no mask for it is an error
(``strict_masks=True``, the default) or, with ``strict_masks=False``, an image without a mask
(logged). A defect folder with no mask folder at all gives anomalous images without masks
(classification-only sets).

Image files: ``.png .jpg .jpeg .bmp .tif .tiff .webp`` (any case); hidden files are skipped.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ...errors import TipsomalyError
from ..images import is_image_file
from ._registry import Meta

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

#: Suffixes tried, in this order, after an image's stem to find its mask (case-insensitive).
MASK_SUFFIXES: tuple[str, ...] = ("_mask", "_label", "_segmentation", "_gt", "")
#: Mask file extensions, in order of preference when several files share a stem.
MASK_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".gif")
#: Folder names (case-insensitive) holding normal images.
NORMAL_DIR_NAMES: frozenset[str] = frozenset({"good", "ok", "normal"})
#: Folder names (case-insensitive) holding masks, next to ``test/`` (MVTec-like) or next to the
#: defect folders (generic folder layout).
MASK_DIR_NAMES: tuple[str, ...] = ("ground_truth", "masks")


class LayoutError(TipsomalyError, ValueError):
    """The folder tree does not match the requested layout (the message says what was expected)."""


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root``, with ``/`` separators (as ``meta.json`` stores it)."""
    return path.relative_to(root).as_posix()


def _entry(
    root: Path, image: Path, mask: Path | None, cls: str, specie: str, anomaly: int
) -> dict[str, Any]:
    """One ``meta.json`` entry (paths relative to ``root``; no mask: ``""``)."""
    return {
        "img_path": _rel(image, root),
        "mask_path": _rel(mask, root) if mask is not None else "",
        "cls_name": cls,
        "specie_name": specie,
        "anomaly": int(anomaly),
    }


def _subdirs(d: Path) -> list[Path]:
    """Visible sub-folders of ``d``, sorted by name (none when ``d`` is not a folder)."""
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(d: Path) -> list[Path]:
    """Image files directly inside ``d``, sorted by name."""
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and is_image_file(p))


def _child(d: Path, name: str) -> Path | None:
    """The child folder of ``d`` called ``name`` (exact match first, then case-insensitive)."""
    exact = d / name
    if exact.is_dir():
        return exact
    low = name.lower()
    for p in _subdirs(d):
        if p.name.lower() == low:
            return p
    return None


def _slug(name: str) -> str:
    """A folder name as a class name: stripped, lower-cased, runs of spaces → ``_``."""
    return re.sub(r"\s+", "_", name.strip()).lower() or "object"


class _MaskIndex:
    """Mask files of one folder, looked up by image stem + known suffix (case-insensitive)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._by_stem: dict[str, list[Path]] = {}
        self.used: set[Path] = set()
        if folder is None or not folder.is_dir():
            return
        for p in folder.iterdir():
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in MASK_EXTENSIONS:
                self._by_stem.setdefault(p.stem.lower(), []).append(p)
        rank = {ext: i for i, ext in enumerate(MASK_EXTENSIONS)}
        for paths in self._by_stem.values():
            paths.sort(key=lambda q: (rank[q.suffix.lower()], q.name))

    def __bool__(self) -> bool:
        return bool(self._by_stem)

    def match(self, image_stem: str) -> Path | None:
        """The mask of ``image_stem`` (tried with each of :data:`MASK_SUFFIXES`), or ``None``."""
        stem = image_stem.lower()
        for suffix in MASK_SUFFIXES:
            found = self._by_stem.get(stem + suffix)
            if found:
                self.used.add(found[0])
                return found[0]
        return None

    def unused(self) -> list[Path]:
        """Mask files no :meth:`match` returned, sorted."""
        return sorted(p for paths in self._by_stem.values() for p in paths if p not in self.used)


class _Problems:
    """Collects layout problems and raises them together."""

    def __init__(self, layout: str, root: Path) -> None:
        self.layout, self.root, self.items = layout, root, []

    def add(self, text: str) -> None:
        """Record one problem (a line of the eventual message)."""
        self.items.append(text)

    def raise_if_any(self) -> None:
        """Raise :class:`LayoutError` listing the first 20 problems, if there are any."""
        if not self.items:
            return
        shown = self.items[:20]
        more = f"\n  ... and {len(self.items) - 20} more" if len(self.items) > 20 else ""
        lines = "\n".join(f"  - {t}" for t in shown)
        raise LayoutError(
            f"{self.layout} layout at {self.root}: {len(self.items)} problem(s):\n{lines}{more}"
        )


def _anomalous_entries(
    root: Path,
    images: Iterable[Path],
    masks: _MaskIndex,
    cls: str,
    specie: str,
    strict_masks: bool,
    problems: _Problems,
) -> list[dict[str, Any]]:
    """Entries of anomalous ``images`` with their masks; a missing mask per ``strict_masks``."""
    out = []
    for img in images:
        mask = masks.match(img.stem) if masks else None
        if mask is None and masks:
            text = (
                f"no mask for {_rel(img, root)} in {_rel(masks.folder, root)} "
                f"(tried {img.stem}{{{','.join(MASK_SUFFIXES)}}}.<ext>)"
            )
            if strict_masks:
                problems.add(text)
                continue
            logger.warning("%s; kept as an anomalous image without a mask", text)
        out.append(_entry(root, img, mask, cls, specie, 1))
    if masks:
        for extra in masks.unused():
            logger.warning("mask %s matches no image", _rel(extra, root))
    return out


def _sorted(meta: Meta) -> Meta:
    """``meta`` with classes sorted by name and each class's entries by image path."""
    return {
        split: {
            cls: sorted(items, key=lambda e: e["img_path"])
            for cls, items in sorted(classes.items())
        }
        for split, classes in meta.items()
    }
