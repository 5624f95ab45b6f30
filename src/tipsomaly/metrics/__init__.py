"""Metrics on numpy arrays or torch tensors: image and pixel AUROC, AP, F1-max and AUPRO.

All metrics are exact (sklearn's tie handling, no binning) and memory-bounded; they never read
files or models. AUPRO comes in two definitions: :func:`aupro_zsad` (the zero-shot papers'
tables) and :func:`aupro_mvtec` (the official MVTec AD evaluation).
"""

from .pro import aupro_mvtec, aupro_zsad, zsad_thresholds
from .ranking import auroc, average_precision, f1_max, ranking_metrics, roc_curve
from .regions import label_regions
from .roi import roi_pixel_metrics
from .summary import class_metrics, image_metrics, pixel_metrics, pro_curve

__all__ = [
    "aupro_mvtec",
    "aupro_zsad",
    "auroc",
    "average_precision",
    "class_metrics",
    "f1_max",
    "image_metrics",
    "label_regions",
    "pixel_metrics",
    "pro_curve",
    "ranking_metrics",
    "roc_curve",
    "roi_pixel_metrics",
    "zsad_thresholds",
]
