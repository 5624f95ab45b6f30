"""Slow, direct implementations of the metric definitions, used only as test oracles."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage import measure
from sklearn.metrics import auc, precision_recall_curve


def f1_max_sklearn(labels: np.ndarray, scores: np.ndarray) -> float:
    """max of 2PR/(P+R) over sklearn's precision-recall curve, 0 where P+R=0."""
    precision, recall, _ = precision_recall_curve(labels.ravel(), scores.ravel())
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return float(f1.max())


def aupro_zsad_loop(maps: np.ndarray, masks: np.ndarray, max_step: int = 200) -> float:
    """The ZSAD per-threshold, per-region loop (as in AnomalyCLIP/AdaCLIP), numpy-1.x thresholds.

    Raises ValueError where the reference code fails (fewer than two kept points).
    """
    lo, hi = maps.min(), maps.max()
    thresholds = np.arange(np.float64(lo), np.float64(hi), np.float64(hi - lo) / max_step)
    thresholds = thresholds.astype(maps.dtype)
    regions = [measure.regionprops(measure.label(m)) for m in masks]
    normal = masks == 0
    pros, fprs = [], []
    for th in thresholds:
        pred = maps > th
        overlaps = [
            pred[i][r.coords[:, 0], r.coords[:, 1]].sum() / r.area
            for i in range(len(masks))
            for r in regions[i]
        ]
        pros.append(np.mean(overlaps))
        fprs.append(np.logical_and(normal, pred).sum() / normal.sum())
    pros, fprs = np.array(pros), np.array(fprs)
    keep = fprs < 0.3
    x = fprs[keep]
    x = (x - x.min()) / (x.max() - x.min())
    return float(auc(x, pros[keep]))


def aupro_mvtec_direct(maps: np.ndarray, masks: np.ndarray, max_fpr: float = 0.3) -> float:
    """Official MVTec AD AUPRO, straight from the definition: one curve point per distinct score.

    Regions: scipy.ndimage.label with a 3x3 all-ones structure (as the MVTec evaluation code).
    """
    regions = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3), dtype=int))
        regions += [(i, lab == k) for k in range(1, n + 1)]
    normal = masks == 0
    xs, ys = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        xs.append((pred & normal).sum() / normal.sum())
        ys.append(np.mean([pred[i][r].sum() / r.sum() for i, r in regions]))
    xs.append(1.0)
    ys.append(1.0)
    area = 0.0
    for k in range(1, len(xs)):
        x0, x1, y0, y1 = xs[k - 1], xs[k], ys[k - 1], ys[k]
        if x1 <= max_fpr:
            area += (x1 - x0) * (y0 + y1) / 2
        else:
            y_end = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            area += (max_fpr - x0) * (y0 + y_end) / 2
            break
    return area / max_fpr


def random_case(
    rng: np.random.Generator, n: int, size: int, levels: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Maps (float32, optionally quantised for ties) and masks with several blobs per image."""
    yy, xx = np.mgrid[:size, :size]
    masks = np.zeros((n, size, size), dtype=np.float32)
    for i in range(n):
        for _ in range(rng.integers(0, 4)):
            cy, cx = rng.integers(0, size, 2)
            ry, rx = rng.integers(1, max(2, size // 4), 2)
            masks[i][((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 1
    masks[0, 0, 0] = 1  # at least one region
    maps = (0.5 * masks + rng.random(masks.shape)).astype(np.float32)
    if levels:
        maps = (np.round(maps * levels) / levels).astype(np.float32)
    return maps, masks
