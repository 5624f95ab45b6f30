"""KolektorSDD: the ZSAD-converted tree or the original ``kosNN`` download."""

from __future__ import annotations

from pathlib import Path

from ..images import ImageLoadError, load_mask
from ._common import (
    LayoutError,
    PathLike,
    _entry,
    _images_in,
    _MaskIndex,
    _Problems,
    _rel,
    _sorted,
    _subdirs,
)
from ._mvtec import _mvtec_class_dirs, _mvtec_like
from ._registry import Meta, register_layout

KSDD_CLASS_NAME = "electrical commutators"  # the class name TipsOmaly/AnomalyCLIP use for KSDD


def _is_ksdd_native_dir(d: Path) -> bool:
    """``d`` holds original KolektorSDD images (a ``*_label`` image among them)."""
    return any(p.stem.lower().endswith("_label") for p in _images_in(d))


@register_layout
def ksdd(root: PathLike, *, class_name: str = KSDD_CLASS_NAME, strict_masks: bool = True) -> Meta:
    """KolektorSDD (KSDD), in either of the two trees people have.

    1. The ZSAD-converted tree (AdaCLIP's ``SDD_anomaly_detection``, the one the published
       ZSAD numbers use): each original image is cut into three vertical thirds, normal thirds
       split 75/25 into train/test, defective thirds all in test::

           <root>/<SDD | electrical commutators>/train/good/*.png
           <root>/<SDD | electrical commutators>/test/{good,defect}/*.png
           <root>/<SDD | electrical commutators>/ground_truth/defect/<name>_mask.png

       read like MVTec AD (the class is the folder name).
    2. The original ``KolektorSDD`` download::

           <root>/kos01 … kos50/Part0.jpg, Part0_label.bmp, …

       every image is one test sample of class ``class_name``; it is anomalous when its
       ``_label`` image has a non-zero pixel (the labels are read). No train split. Numbers
       on this tree are not comparable with the published ones (whole images, not thirds).
    """
    root = Path(root)
    class_dirs = _mvtec_class_dirs(root)
    if class_dirs:
        return _mvtec_like(root, "ksdd", strict_masks=strict_masks, class_dirs=class_dirs)
    dirs = [d for d in _subdirs(root) if _is_ksdd_native_dir(d)]
    if not dirs and _is_ksdd_native_dir(root):
        dirs = [root]
    if not dirs:
        raise LayoutError(
            f"ksdd layout: {root} has neither <class>/test/… folders (converted KSDD) nor "
            f"kosNN/PartN.jpg + PartN_label.bmp folders (original KolektorSDD)"
        )
    problems = _Problems("ksdd", root)
    entries = []
    for d in dirs:
        files = _images_in(d)
        labels = _MaskIndex(d)
        for img in files:
            if img.stem.lower().endswith("_label"):
                continue
            label = labels.match(img.stem)
            if label is None or label == img:
                problems.add(
                    f"no label image for {_rel(img, root)} (expected {img.stem}_label.bmp)"
                )
                continue
            try:
                defective = bool(load_mask(label, None).any())
            except ImageLoadError as exc:
                problems.add(str(exc))
                continue
            entries.append(
                _entry(
                    root,
                    img,
                    label if defective else None,
                    class_name,
                    "defect" if defective else "good",
                    int(defective),
                )
            )
    problems.raise_if_any()
    return _sorted({"train": {}, "test": {class_name: entries}})
