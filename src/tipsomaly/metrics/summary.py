"""The image-level and pixel-level metric sets of the paper's tables, under golden.json's names."""

from __future__ import annotations

import numpy as np

from ._arrays import as_maps, as_scores
from ._split import split_scores
from .pro import aupro_mvtec_from_split, aupro_zsad, pro_curve_mvtec_from_split, pro_curve_zsad
from .ranking import ranking_from_split
from .roi import roi_layout, roi_pixel_metrics

AUPRO_KINDS = ("zsad", "mvtec")


def image_metrics(scores: object, labels: object) -> dict[str, float]:
    """Image-level AUROC, AP and F1-max.

    Args:
        scores: ``(N,)`` anomaly scores (numpy or torch), higher = more anomalous.
        labels: ``(N,)`` image labels, bool or 0/1 (1 = anomalous).

    Returns:
        ``{"image_auroc", "image_ap", "image_f1-max"}``; NaN values (with a logged warning)
        when all images have the same label.
    """
    scores_a, labels_a = as_scores(scores, labels)
    if scores_a.ndim != 1:
        raise ValueError(f"image scores and labels must be 1-D (N,), got shape {scores_a.shape}")
    values = ranking_from_split(split_scores(scores_a, labels_a, regions=False), "image ")
    return {f"image_{name}": value for name, value in values.items()}


def pixel_metrics(maps: object, masks: object, aupro: str = "zsad") -> dict[str, float]:
    """Pixel-level AUROC, AP, AUPRO and F1-max over all pixels of a set of maps (one class).

    All values are exact (no binning); the scores are split and sorted once, so the extra
    memory is about one copy of ``maps`` plus some tens of bytes per anomalous pixel.

    Args:
        maps: ``(N, H, W)`` (or ``(H, W)``, ``(N, 1, H, W)``) anomaly maps, real values.
        masks: same shape, binary ground truth (bool or 0/1).
        aupro: ``"zsad"`` for the zero-shot papers' convention (:func:`aupro_zsad`, the one of
            the paper's tables) or ``"mvtec"`` for the official MVTec AD one (:func:`aupro_mvtec`).

    Returns:
        ``{"pixel_auroc", "pixel_ap", "pixel_aupro", "pixel_f1-max"}``; undefined values (no
        anomalous or no normal pixel, no region) are NaN with a logged warning.
    """
    if aupro not in AUPRO_KINDS:
        raise ValueError(f"aupro must be one of {AUPRO_KINDS}, got {aupro!r}")
    maps_a, masks_a = as_maps(maps, masks)
    split = split_scores(maps_a, masks_a, regions=aupro == "mvtec")
    values = ranking_from_split(split, "pixel ")
    if aupro == "zsad":
        pro = aupro_zsad(maps_a, masks_a)  # streams over the maps; needs no sorted split
    else:
        pro = aupro_mvtec_from_split(split)
    return {
        "pixel_auroc": values["auroc"],
        "pixel_ap": values["ap"],
        "pixel_aupro": pro,
        "pixel_f1-max": values["f1-max"],
    }


def class_metrics(
    scores_cls1: np.ndarray,
    scores_cls2: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    aupro: str = "zsad",
    valid: np.ndarray | None = None,
) -> dict[str, float]:
    """Metrics of one class: image metrics for both CLS tokens, pixel metrics when masks exist.

    scores_cls*: (n,) image scores; labels: (n,) 0/1; maps, masks: (n, S, S) or None;
    valid: (n, S, S) bool, the pixels the pixel metrics count (an ROI,
    :func:`~.roi.roi_pixel_metrics`), or None for all. Keys as in golden.json:
    ``image_auroc_cls1`` … ``image_f1-max_cls2``, ``pixel_auroc``, ``pixel_ap``,
    ``pixel_aupro``, ``pixel_f1-max``.
    """
    out: dict[str, float] = {}
    for tag, scores in (("cls1", scores_cls1), ("cls2", scores_cls2)):
        for name, value in image_metrics(scores, labels).items():
            out[f"{name}_{tag}"] = value
    if maps is not None and masks is not None:
        if valid is None:
            out.update(pixel_metrics(maps, masks, aupro=aupro))
        else:
            out.update(roi_pixel_metrics(maps, masks, valid, aupro=aupro))
    return out


def pro_curve(
    maps: object, masks: object, aupro: str = "zsad", valid: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-region overlap curve whose area is :func:`pixel_metrics`' ``pixel_aupro``
    (``valid``: over those pixels only, as :func:`class_metrics`): ``(fpr, pro)``
    (:func:`~.pro.pro_curve_zsad` or :func:`~.pro.pro_curve_mvtec_from_split`, not cut at
    the FPR limit); None (warned) where that AUPRO is undefined."""
    if aupro not in AUPRO_KINDS:
        raise ValueError(f"aupro must be one of {AUPRO_KINDS}, got {aupro!r}")
    if valid is not None:
        laid = roi_layout(np.asarray(maps), np.asarray(masks), valid)
        if laid is None:
            return None
        maps, masks = laid[0][None, None], laid[1][None, None]
    if aupro == "zsad":
        return pro_curve_zsad(maps, masks)
    maps_a, masks_a = as_maps(maps, masks)
    return pro_curve_mvtec_from_split(split_scores(maps_a, masks_a, regions=True, what="masks"))
