"""Datasets: image loading and preprocessing (:mod:`~tipsomaly.data.images`, the one place that
decides it), ``meta.json``, native layouts, torch datasets, input paths and regions of interest.

This layer imports only :mod:`tipsomaly.errors` and :mod:`tipsomaly.files` below it
(``tests/test_layers.py`` checks the order), never :mod:`tipsomaly.metrics` beside it nor a
layer above.

Names are imported on first use. PyTorch is imported only by :mod:`~tipsomaly.data.dataset` and by
the tensor helpers of :mod:`~tipsomaly.data.images` when called: reading ``meta.json``, scanning a
layout or expanding inputs does not import it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AnomalyDataset": "dataset",
    "collate_samples": "dataset",
    "make_loader": "dataset",
    "DEFAULT_MAX_PIXELS": "images",
    "IMAGE_EXTENSIONS": "images",
    "ImageLoadError": "images",
    "binarize_mask_image": "images",
    "is_image_file": "images",
    "load_image": "images",
    "load_mask": "images",
    "load_tensor": "images",
    "open_image": "images",
    "original_hw": "images",
    "pil_to_tensor": "images",
    "preprocess": "images",
    "resize_mask": "images",
    "to_pil": "images",
    "to_rgb": "images",
    "LAYOUTS": "layouts",
    "LAYOUT_NAMES": "layouts",
    "LayoutError": "layouts",
    "build_meta": "layouts",
    "detect_layout": "layouts",
    "NoInputsError": "inputs",
    "display_path": "names",
    "expand_inputs": "inputs",
    "output_names": "inputs",
    "DatasetMeta": "meta",
    "MetaError": "meta",
    "Sample": "meta",
    "read_meta": "meta",
    "validate_meta": "meta",
    "write_meta": "meta",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
