"""A plain folder tree, for your own data."""

from __future__ import annotations

import logging
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


def _is_folder_class(d: Path) -> bool:
    """``d`` has a sub-folder (not a mask folder) with images: a class of the folder tree."""
    return any(_images_in(s) for s in _subdirs(d) if s.name.lower() not in MASK_DIR_NAMES)


@register_layout
def folder(root: PathLike, *, strict_masks: bool = True) -> Meta:
    """A plain folder tree, for your own data.

    Expected tree::

        <root>/<class>/good/*.png                    normal images (also ok/, normal/)
        <root>/<class>/<defect>/*.png                anomalous images, one folder per defect type
        <root>/<class>/ground_truth/<defect>/*.png   optional masks, same stem as the image,
                                                     optionally with _mask/_label/_gt suffix
        <root>/<class>/masks/<defect>/*.png          (alternative name of that mask folder)

    ``root`` may also be one class folder itself (``<root>/good/…``; the class is the folder
    name). Images lying directly in a class folder are ignored (their label is unknown). Every
    image goes to the ``test`` split; ``train`` is empty.
    """
    root = Path(root)
    class_dirs = (
        [(root, root.name)]
        if any(_child(root, n) is not None for n in NORMAL_DIR_NAMES)
        else [(d, d.name) for d in _subdirs(root) if _is_folder_class(d)]
    )
    if not class_dirs:
        raise LayoutError(f"folder layout: no <class>/<good|defect>/<image> folders under {root}")
    problems = _Problems("folder", root)
    test: dict[str, list[dict[str, Any]]] = {}
    for cls_dir, cls in class_dirs:
        mask_roots = [m for m in (_child(cls_dir, n) for n in MASK_DIR_NAMES) if m is not None]
        loose = _images_in(cls_dir)
        if loose:
            logger.warning(
                "folder: ignoring %d image(s) directly in %s (no good/defect folder)",
                len(loose),
                _rel(cls_dir, root) if cls_dir != root else root,
            )
        entries: list[dict[str, Any]] = []
        for sub in _subdirs(cls_dir):
            if sub.name.lower() in MASK_DIR_NAMES:
                continue
            images = _images_in(sub)
            if sub.name.lower() in NORMAL_DIR_NAMES:
                entries += [_entry(root, p, None, cls, sub.name, 0) for p in images]
                continue
            mask_dir = next((d for d in (_child(m, sub.name) for m in mask_roots) if d), None)
            entries += _anomalous_entries(
                root, images, _MaskIndex(mask_dir), cls, sub.name, strict_masks, problems
            )
        test[cls] = entries
    problems.raise_if_any()
    return _sorted({"train": {}, "test": test})
