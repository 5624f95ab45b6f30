"""Datasets: image loading and preprocessing, ``meta.json``, native layouts, torch datasets.

- :mod:`~tipsomaly.data.images`   the one place that decides preprocessing (files, arrays and
  tensors → (3, S, S) float tensors in [0, 1]; masks → (S, S) {0, 1}).
- :mod:`~tipsomaly.data.meta`     the ``meta.json`` schema: read with validation, write.
- :mod:`~tipsomaly.data.layouts`  native dataset trees (MVTec AD, VisA, MPDD, BTAD, DTD-Synthetic,
  KSDD, DAGM, medical sets, plain folders) → ``meta.json`` dicts.
- :mod:`~tipsomaly.data.dataset`  ``meta.json`` → tensors, tolerant of unreadable files.

This layer imports nothing from :mod:`tipsomaly.method` or :mod:`tipsomaly.cli`.
"""

from .dataset import AnomalyDataset, collate_samples, make_loader
from .images import (
    IMAGE_EXTENSIONS,
    ImageLoadError,
    binarize_mask_image,
    is_image_file,
    load_image,
    load_mask,
    load_tensor,
    open_image,
    original_hw,
    pil_to_tensor,
    preprocess,
    resize_mask,
    to_pil,
    to_rgb,
)
from .layouts import LAYOUTS, LayoutError, build_meta, detect_layout
from .meta import DatasetMeta, MetaError, Sample, read_meta, validate_meta, write_meta

__all__ = [
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "AnomalyDataset",
    "DatasetMeta",
    "ImageLoadError",
    "LayoutError",
    "MetaError",
    "Sample",
    "binarize_mask_image",
    "build_meta",
    "collate_samples",
    "detect_layout",
    "is_image_file",
    "load_image",
    "load_mask",
    "load_tensor",
    "make_loader",
    "open_image",
    "original_hw",
    "pil_to_tensor",
    "preprocess",
    "read_meta",
    "resize_mask",
    "to_pil",
    "to_rgb",
    "validate_meta",
    "write_meta",
]
