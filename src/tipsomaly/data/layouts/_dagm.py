"""DAGM 2007: the original competition release or its MVTec-like conversion."""

from __future__ import annotations

import logging
from pathlib import Path

from ._common import (
    LayoutError,
    PathLike,
    _child,
    _entry,
    _images_in,
    _MaskIndex,
    _rel,
    _sorted,
    _subdirs,
)
from ._mvtec import _mvtec_class_dirs, _mvtec_like
from ._registry import Meta, register_layout

logger = logging.getLogger(__name__)


def _is_dagm_native_class(d: Path) -> bool:
    """``d`` is an original DAGM class folder: ``Train`` and ``Test``, one with ``Label/``."""
    splits = [_child(d, "Train"), _child(d, "Test")]
    if any(s is None for s in splits):
        return False
    return any(_child(s, "Label") is not None for s in splits)


@register_layout
def dagm(root: PathLike, *, strict_masks: bool = True) -> Meta:
    """DAGM 2007, in either of the two trees people have.

    1. The original competition release (also on Kaggle as ``DAGM_KaggleUpload``)::

           <root>/Class1 … Class10/{Train,Test}/NNNN.PNG
           <root>/Class1 … Class10/{Train,Test}/Label/NNNN_label.PNG   (+ Labels.txt)

       An image is anomalous exactly when it has a ``_label`` mask (as AnomalyCLIP's
       ``generate_dataset_json/DAGM.py`` decides); ``Train`` → split ``train``, ``Test`` →
       ``test``; ``specie_name`` is ``defect``/``good``.
    2. The MVTec-like conversion (AdaCLIP's ``DAGM_anomaly_detection``)::

           <root>/ClassN/{train/good, test/{good,defect}, ground_truth/defect/NNNN_label.PNG}
    """
    root = Path(root)
    if _is_dagm_native_class(root):
        native = [(root, root.name)]
    else:
        native = [(d, d.name) for d in _subdirs(root) if _is_dagm_native_class(d)]
    converted = _mvtec_class_dirs(root) if not native else []
    if converted:
        return _mvtec_like(root, "dagm", strict_masks=strict_masks, class_dirs=converted)
    if not native:
        raise LayoutError(
            f"dagm layout: no ClassN/{{Train,Test}}/Label folders (original DAGM 2007) nor "
            f"ClassN/test/… folders (MVTec-like conversion) under {root}"
        )
    meta: Meta = {"train": {}, "test": {}}
    for cls_dir, cls in native:
        for split, name in (("train", "Train"), ("test", "Test")):
            split_dir = _child(cls_dir, name)
            if split_dir is None:
                continue
            labels = _MaskIndex(_child(split_dir, "Label"))
            entries = []
            for img in _images_in(split_dir):
                mask = labels.match(img.stem) if labels else None
                if mask is not None and mask.stem.lower() == img.stem.lower():
                    mask = None  # a same-named file in Label/ is not a defect mask
                entries.append(
                    _entry(
                        root, img, mask, cls, "defect" if mask else "good", int(mask is not None)
                    )
                )
            for extra in labels.unused():
                logger.warning("dagm: mask %s matches no image", _rel(extra, root))
            meta[split][cls] = entries
    return _sorted(meta)
