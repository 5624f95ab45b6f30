"""MVTec-like trees (MVTec AD, MPDD, BTAD, DTD-Synthetic; also read by other layouts)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from ._common import (
    MASK_DIR_NAMES,
    NORMAL_DIR_NAMES,
    LayoutError,
    PathLike,
    _anomalous_entries,
    _child,
    _entry,
    _images_in,
    _MaskIndex,
    _Problems,
    _rel,
    _sorted,
    _subdirs,
)
from ._registry import Meta, register_layout

logger = logging.getLogger(__name__)

# fmt: off
MVTEC_CLASSES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
    "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
MPDD_CLASSES = (
    "bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes",
)
BTAD_CLASSES = ("01", "02", "03")
DTD_CLASSES = (
    "Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037",
    "Stratified_154", "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127",
)
# fmt: on


def _mvtec_class_dirs(root: Path) -> list[tuple[Path, str]]:
    """(class folder, name) pairs of an MVTec-like tree: root/<cls>/test/…, or root/test/…."""
    if _child(root, "test") is not None:
        return [(root, root.name)]
    return [(d, d.name) for d in _subdirs(root) if _child(d, "test") is not None]


def _mvtec_like(
    root: Path,
    layout: str,
    *,
    normal_names: Iterable[str] = NORMAL_DIR_NAMES,
    strict_masks: bool = True,
    class_dirs: Sequence[tuple[Path, str]] | None = None,
) -> Meta:
    """Read an MVTec-like tree (``<class>/{train,test}/<specie>``, ``ground_truth/``)."""
    normal = {n.lower() for n in normal_names}
    dirs = list(class_dirs) if class_dirs is not None else _mvtec_class_dirs(root)
    if not dirs:
        raise LayoutError(
            f"{layout} layout: no class folder with a test/ subfolder under {root} "
            f"(expected <root>/<class>/test/<defect or good>/<image>)"
        )
    problems = _Problems(layout, root)
    meta: Meta = {"train": {}, "test": {}}
    for cls_dir, cls in dirs:
        mask_roots = [m for m in (_child(cls_dir, n) for n in MASK_DIR_NAMES) if m is not None]
        for split in ("train", "test"):
            split_dir = _child(cls_dir, split)
            if split_dir is None:
                continue
            entries: list[dict[str, Any]] = []
            for specie_dir in _subdirs(split_dir):
                specie = specie_dir.name
                images = _images_in(specie_dir)
                if not images:
                    logger.warning("%s: no images in %s", layout, _rel(specie_dir, root))
                    continue
                if specie.lower() in normal:
                    entries += [_entry(root, p, None, cls, specie, 0) for p in images]
                    continue
                mask_dir = next((d for d in (_child(m, specie) for m in mask_roots) if d), None)
                if mask_dir is None and split == "test":
                    logger.info(
                        "%s: no mask folder for %s/%s/%s: image-level labels only",
                        layout,
                        cls,
                        split,
                        specie,
                    )
                entries += _anomalous_entries(
                    root, images, _MaskIndex(mask_dir), cls, specie, strict_masks, problems
                )
            meta[split][cls] = entries
    problems.raise_if_any()
    return _sorted(meta)


@register_layout
def mvtec(root: PathLike, *, strict_masks: bool = True) -> Meta:
    """MVTec AD (and any tree laid out like it).

    Expected tree::

        <root>/<class>/train/good/*.png
        <root>/<class>/test/good/*.png
        <root>/<class>/test/<defect>/*.png
        <root>/<class>/ground_truth/<defect>/<name>_mask.png

    ``root`` may also be a single class folder (``<root>/test/…``; the class is the folder name).
    Normal folders are ``good`` (also ``ok``/``normal``); every other folder under ``test/`` is a
    defect type (``specie_name``). Both ``train`` and ``test`` splits are built.
    """
    return _mvtec_like(Path(root), "mvtec", strict_masks=strict_masks)


@register_layout
def mpdd(root: PathLike, *, strict_masks: bool = True) -> Meta:
    """MPDD: the MVTec AD tree.

    ``<class>/{train/good, test/<defect>, ground_truth/<defect>/<name>_mask.png}``.

    Classes: bracket_black, bracket_brown, bracket_white, connector, metal_plate, tubes.
    """
    return _mvtec_like(Path(root), "mpdd", strict_masks=strict_masks)


@register_layout
def btad(root: PathLike, *, strict_masks: bool = True) -> Meta:
    """BTAD (``BTech_Dataset_transformed``).

    Expected tree::

        <root>/<01|02|03>/train/ok/*.{bmp,png}
        <root>/<01|02|03>/test/ok/*.{bmp,png}
        <root>/<01|02|03>/test/ko/*.{bmp,png}
        <root>/<01|02|03>/ground_truth/ko/*.{png,bmp}

    Normal folder ``ok``, anomalous ``ko``. Image and mask extensions differ between classes
    (the original release mixes ``.bmp`` and ``.png``; anomalib converts everything to
    ``.png``), so masks are matched by stem, whatever the extension.
    """
    return _mvtec_like(Path(root), "btad", strict_masks=strict_masks)


@register_layout
def dtd(root: PathLike, *, strict_masks: bool = True) -> Meta:
    """DTD-Synthetic.

    Expected tree::

        <root>/<Texture_NNN>/train/good/*.png
        <root>/<Texture_NNN>/test/good/*.png
        <root>/<Texture_NNN>/test/bad/*.png
        <root>/<Texture_NNN>/ground_truth/bad/<name>[_mask].png

    Twelve classes: Blotchy_099, Fibrous_183, Marbled_078, Matted_069, Mesh_114,
    Perforated_037, Stratified_154, Woven_001, Woven_068, Woven_104, Woven_125, Woven_127.
    """
    return _mvtec_like(Path(root), "dtd", strict_masks=strict_masks)
