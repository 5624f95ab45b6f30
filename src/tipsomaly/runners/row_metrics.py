"""A class's metrics from its stored rows (:mod:`.fill`): image scores, maps, ROI, metrics.

Untiled rows hold network outputs: image scores are ``global + max patch evidence``
(:func:`~tipsomaly.method.scoring.image_scores`) and maps are rebuilt with ``sigma``
(:func:`class_maps`), so changing ``sigma``, ``cls`` or ``aupro`` runs no network. Tiled rows
hold (global, local) pairs and the map at S (their sum and map, as predicted).

Regions of interest: maps are 0 outside the ROI, image scores take only ROI evidence (the
detector's rule: untiled, the patch cells at least half inside the ROI; tiled, applied while
predicting), and pixels outside the ROI are left out of the pixel metrics
(:func:`~tipsomaly.metrics.roi_pixel_metrics`: exact, as if the images held only their ROI's
pixels). Untiled, the ROI is applied here to the stored outputs, so it is not in the store key
and changing it runs no network.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..data.roi import RoiLookup, fit_roi, roi_cells
from ..metrics import class_metrics, pro_curve, roc_curve
from ..report.eval_page import Case, ClassPlots
from .store import ClassPredictions

if TYPE_CHECKING:
    from .config import EvalConfig

logger = logging.getLogger(__name__)

__all__ = ["class_maps", "evaluate_class", "metrics_of", "row_scores"]


def row_scores(
    predictions: ClassPredictions, tiled: bool, rois: Sequence[np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The (n,) image scores of a class's n rows for CLS tokens 1 and 2, the ones ``predict``
    gives the same images; ``rois``: each row's (H, W) bool ROI at its image's size (untiled
    rows take their local evidence inside it; tiled rows were predicted with it)."""
    from ..method.scoring import image_scores

    a = predictions.arrays
    g1, g2 = a["global_probs_cls1"], a["global_probs_cls2"]
    if tiled:  # (global, local) pairs: summed as predicted
        return g1.sum(axis=1), g2.sum(axis=1)
    patch = torch.from_numpy(a["patch_probs"])
    score1 = image_scores(torch.from_numpy(g1), patch).numpy()
    score2 = image_scores(torch.from_numpy(g2), patch).numpy()
    if rois is not None:
        grid = int(round(math.sqrt(patch.shape[1])))
        for j, roi in enumerate(rois):
            # the detector's rule: the patch cells at least half inside the ROI
            local = patch[j, torch.from_numpy(roi_cells(roi, (grid, grid))), 1].max()
            score1[j] = float(torch.from_numpy(g1[j, 1:2])[0] + local)
            score2[j] = float(torch.from_numpy(g2[j, 1:2])[0] + local)
    return score1, score2


def metrics_of(
    class_name: str, predictions: ClassPredictions, settings: EvalConfig, rois: RoiLookup
) -> dict[str, float]:
    """:func:`~tipsomaly.metrics.class_metrics` of a class's rows at the settings' model
    resolution (see the module doc); ``{}`` (warned) when no image could be evaluated."""
    return evaluate_class(class_name, predictions, settings, rois)[0]


def evaluate_class(
    class_name: str,
    predictions: ClassPredictions,
    settings: EvalConfig,
    rois: RoiLookup,
    plots: bool = False,
    worst: int = 3,
) -> tuple[dict[str, float], ClassPlots | None]:
    """:func:`metrics_of`, and with ``plots`` what the eval report draws of the class
    (:class:`~tipsomaly.report.eval_page.ClassPlots`: its ROC and PRO curves from the same
    scores and maps, and its ``worst`` highest-scored normal and lowest-scored anomalous
    images with their maps)."""
    a = predictions.arrays
    n = len(predictions)
    if n == 0:
        logger.warning("class %s: no image could be evaluated", class_name)
        return {}, None
    size, tiled = settings.image_size, settings.tile is not None
    valid = each = None
    if rois.active:
        each = [
            rois.of(predictions.paths[position], tuple(a["original_hw"][j]))
            for j, position in enumerate(a["index"])
        ]
        valid = np.stack([fit_roi(roi, (size, size))[0] for roi in each])
    score1, score2 = row_scores(predictions, tiled, each)
    maps = masks = None
    if a["has_mask"].any():
        if not a["has_mask"][a["label"] == 1].all():
            logger.warning(
                "class %s: some anomalous images have no mask; their pixels count as normal",
                class_name,
            )
        maps = _maps(predictions, settings, valid)
        masks = predictions.masks(size)
    labels = a["label"]
    metrics = class_metrics(score1, score2, labels, maps, masks, aupro=settings.aupro, valid=valid)
    if not plots:
        return metrics, None
    scores = score1 if settings.cls == "cls1" else score2
    roc = roc_curve(scores, labels) if 0 < labels.sum() < n else None
    pro = None
    if maps is not None and masks is not None and masks.any():
        pro = pro_curve(maps, masks, settings.aupro, valid)
    # the worst-ranked: normal images scored highest, anomalous ones scored lowest
    normal, anomalous = np.flatnonzero(labels == 0), np.flatnonzero(labels == 1)
    picked = [(j, "false positive") for j in normal[np.argsort(-scores[normal])][:worst]]
    picked += [(j, "false negative") for j in anomalous[np.argsort(scores[anomalous])][:worst]]
    rows = [j for j, _ in picked]
    case_maps = maps[rows] if maps is not None else _maps(predictions, settings, valid, rows)
    cases = [
        Case(
            path=predictions.paths[int(a["index"][j])],
            kind=kind,
            score=float(scores[j]),
            map=case_maps[k],
            mask=None if masks is None or labels[j] == 0 else masks[j],
        )
        for k, (j, kind) in enumerate(picked)
    ]
    tag = "cls1" if settings.cls == "cls1" else "cls2"
    return metrics, ClassPlots(
        roc=roc,
        auroc=metrics.get(f"image_auroc_{tag}", float("nan")),
        pro=pro,
        aupro=metrics.get("pixel_aupro", float("nan")),
        aupro_kind=settings.aupro,
        cases=cases,
    )


def _maps(
    predictions: ClassPredictions,
    settings: EvalConfig,
    valid: np.ndarray | None,
    rows: list[int] | None = None,
) -> np.ndarray:
    """(n, S, S) float32 maps of the class's rows (``rows``: of those only), 0 outside the
    ROI ``valid``."""
    size = settings.image_size
    probs = predictions.arrays["patch_probs"]
    if rows is not None:
        probs = probs[rows]
    if settings.tile is not None:
        maps = np.ascontiguousarray(probs[..., 0].reshape(len(probs), size, size))
    else:
        maps = class_maps(torch.from_numpy(probs), size, settings.sigma)
    if valid is not None:
        maps[~(valid if rows is None else valid[rows])] = 0.0
    return maps


def class_maps(
    patch_probs: torch.Tensor, image_size: int, sigma: float, chunk: int = 32
) -> np.ndarray:
    """(n, S, S) float32 anomaly maps rebuilt from stored (n, N, 2) patch probabilities."""
    from ..method.maps import anomaly_maps

    s = image_size
    grid = int(round(math.sqrt(patch_probs.shape[1])))
    out = np.empty((patch_probs.shape[0], s, s), dtype=np.float32)
    for start in range(0, patch_probs.shape[0], chunk):
        part = patch_probs[start : start + chunk]
        out[start : start + part.shape[0]] = anomaly_maps(part, (grid, grid), (s, s), sigma).numpy()
    return out
