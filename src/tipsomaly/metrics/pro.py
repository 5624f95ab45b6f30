"""AUPRO (area under the per-region overlap curve): ZSAD-paper and official MVTec AD forms."""

from __future__ import annotations

import numpy as np

from ._arrays import as_maps, undefined
from ._split import SplitScores, chunks, sorted_searchsorted, split_scores


def zsad_thresholds(lo: np.generic, hi: np.generic, num_thresholds: int = 200) -> np.ndarray:
    """The ZSAD threshold list ``np.arange(lo, hi, (hi - lo) / num_thresholds)``.

    As the reference code evaluates it (numpy 1.x promotion): ``hi - lo`` in the scores' dtype,
    the step and ``np.arange`` in float64, the thresholds then compared with the maps in the
    maps' dtype (float32 maps give float32 thresholds). Float rounding makes ``np.arange`` yield
    ``num_thresholds`` or ``num_thresholds + 1`` values; the list is kept exactly as it comes.
    A float32 step instead (numpy 2 promotion of the same expression) moves the golden AUPRO
    values by up to 2.5e-6, beyond their tolerance.

    Args:
        lo, hi: minimum and maximum of all scores (scalars of the scores' dtype), ``lo < hi``.
        num_thresholds: the divisor of the step.

    Returns:
        ``(T,)`` ascending thresholds, ``T`` in ``{num_thresholds, num_thresholds + 1}``, in the
        scores' dtype for floating scores, float64 otherwise.
    """
    step = np.float64(hi - lo) / num_thresholds
    thresholds = np.arange(np.float64(lo), np.float64(hi), step)
    if np.issubdtype(hi.dtype, np.floating):
        thresholds = thresholds.astype(hi.dtype)
    return thresholds


def aupro_zsad_from_split(
    split: SplitScores, num_thresholds: int = 200, max_fpr: float = 0.3
) -> float:
    """ZSAD-convention AUPRO of split pixel scores (see :func:`aupro_zsad`)."""
    if split.n_regions == 0:
        return undefined("AUPRO", "the masks have no anomalous region")
    if split.n_neg == 0:
        return undefined("AUPRO", "the masks have no normal pixel")
    lo, hi = split.extremes()
    if not lo < hi:
        return undefined("AUPRO", "all scores are equal")
    thresholds = zsad_thresholds(lo, hi, num_thresholds)
    n_th = thresholds.size

    # A pixel with score v is predicted anomalous ("v > th") for the thresholds th < v, i.e.
    # for the first k = searchsorted(thresholds, v, "left") thresholds.
    false_pos = split.n_neg - np.searchsorted(split.neg, thresholds, side="right")
    counts = np.zeros(split.n_regions * (n_th + 1), dtype=np.int64)
    for part in chunks(split.n_pos):
        k = np.searchsorted(thresholds, split.pos[part], side="left")
        counts += np.bincount(
            split.region[part].astype(np.int64) * (n_th + 1) + k, minlength=counts.size
        )
    counts = counts.reshape(split.n_regions, n_th + 1)
    # overlap[r, j] = pixels of region r with k > j = sum of counts[r, j + 1:]
    overlap = np.cumsum(counts[:, ::-1], axis=1)[:, ::-1][:, 1:]
    pro = (overlap / split.area[:, None]).mean(axis=0)
    fpr = false_pos / split.n_neg

    keep = fpr < max_fpr
    if np.count_nonzero(keep) < 2:
        return undefined("AUPRO", f"fewer than 2 of the {n_th} thresholds have FPR < {max_fpr}")
    fpr, pro = fpr[keep], pro[keep]
    if fpr.max() == fpr.min():
        return undefined("AUPRO", f"all thresholds with FPR < {max_fpr} have the same FPR")
    x = (fpr - fpr.min()) / (fpr.max() - fpr.min())
    # x decreases along the thresholds; like sklearn.metrics.auc, the area is -trapezoid(pro, x).
    return -float(np.sum(np.diff(x) * (pro[1:] + pro[:-1]) / 2.0))


def aupro_zsad(
    maps: object, masks: object, *, num_thresholds: int = 200, max_fpr: float = 0.3
) -> float:
    """AUPRO as computed in the zero-shot AD papers' tables (AnomalyCLIP / AdaCLIP code).

    Thresholds ``np.arange(min, max, (max - min) / 200)`` over all maps, prediction
    ``map > th``; for each threshold, PRO = mean over the 8-connected regions of all masks of
    (region pixels predicted anomalous / region area) and FPR = predicted normal pixels / normal
    pixels. The points with FPR < ``max_fpr`` are kept, their FPRs rescaled min–max to [0, 1]
    and PRO integrated over them with the trapezoid rule. This is NOT the official MVTec AUPRO
    (see :func:`aupro_mvtec`).

    Args:
        maps: ``(N, H, W)`` (or ``(H, W)``, ``(N, 1, H, W)``) real anomaly maps.
        masks: same shape, binary ground truth (bool or 0/1).
        num_thresholds: the 200 of the threshold step.
        max_fpr: FPR limit of the kept points.

    Returns:
        The AUPRO in [0, 1]; NaN with a warning when undefined (no region, no normal pixel,
        constant maps, fewer than two kept points or all kept FPRs equal).
    """
    maps_a, masks_a = as_maps(maps, masks)
    split = split_scores(maps_a, masks_a, regions=True)
    return aupro_zsad_from_split(split, num_thresholds=num_thresholds, max_fpr=max_fpr)


def _sort_with_payload(values: np.ndarray, payload: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sort ``values`` ascending and reorder ``payload`` (non-negative int32) the same way.

    Memory: about 16 bytes per element on top of the inputs.

    float32 values are sorted as one uint64 key (order-preserving bits of the value, payload in
    the low 32 bits), which is several times faster than ``argsort``; other dtypes use argsort.
    """
    if values.dtype != np.float32:
        order = np.argsort(values, kind="stable")
        return values[order], payload[order]
    bits = (values + np.float32(0.0)).view(np.uint32)  # + 0.0 turns -0.0 into +0.0
    keys = np.where(bits >= np.uint32(0x80000000), ~bits, bits | np.uint32(0x80000000))
    del bits
    keys = keys.astype(np.uint64)
    keys <<= np.uint64(32)
    np.bitwise_or(keys, payload.view(np.uint32), out=keys)
    keys.sort()
    payload_sorted = (keys & np.uint64(0xFFFFFFFF)).astype(payload.dtype)
    keys >>= np.uint64(32)
    high = keys.astype(np.uint32)
    del keys
    negative = high < np.uint32(0x80000000)
    bits = np.where(negative, ~high, high & np.uint32(0x7FFFFFFF))
    return bits.view(np.float32), payload_sorted


def _trapezoid_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoidal area under the polyline (x, y) from x[0] to ``x_max``.

    ``x`` is non-decreasing with ``x[0] <= x_max < x[-1]``; when ``x_max`` falls between two
    points, the end point is linearly interpolated (as in the MVTec AD evaluation code).
    """
    n_in = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    area = 0.0
    for part in chunks(n_in - 1):  # segments [i, i + 1] for i < n_in - 1, chunk by chunk
        a, b = part.start, part.stop
        area += float(np.dot(x[a + 1 : b + 1] - x[a:b], y[a + 1 : b + 1] + y[a:b])) / 2.0
    if x[n_in - 1] < x_max:
        x0, x1, y0, y1 = x[n_in - 1], x[n_in], y[n_in - 1], y[n_in]
        y_end = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        area += float((y0 + y_end) / 2.0 * (x_max - x0))
    return area


def aupro_mvtec_from_split(split: SplitScores, max_fpr: float = 0.3) -> float:
    """Official MVTec AD AUPRO of split pixel scores (see :func:`aupro_mvtec`)."""
    if split.n_regions == 0:
        return undefined("AUPRO", "the masks have no anomalous region")
    if split.n_neg == 0:
        return undefined("AUPRO", "the masks have no normal pixel")
    n_neg, n_regions = split.n_neg, split.n_regions
    values, region = _sort_with_payload(split.pos, split.region)
    # Walk the anomalous pixels from the highest score down; each adds 1/area of its region.
    values = values[::-1]
    pro_sum = 1.0 / split.area[region[::-1]]
    del region
    np.cumsum(pro_sum, out=pro_sum)
    last = np.flatnonzero(np.append(values[1:] != values[:-1], True))  # end of each tie run
    levels = values[last]  # distinct anomalous scores, descending
    del values

    # The curve over every distinct threshold, from (0, 0) to (1, 1). Between two anomalous
    # levels only the FPR grows (a horizontal segment), so two points per level describe the
    # curve exactly: "score > level" (odd indices) and "score >= level" (even indices).
    above, at = slice(1, -1, 2), slice(2, -1, 2)
    y = np.empty(2 * levels.size + 2)
    y[at] = pro_sum[last]
    del pro_sum, last
    y[at] /= n_regions
    y[3:-1:2] = y[2:-3:2]  # PRO above a level = PRO at the previous (higher) level
    y[0], y[1], y[-1] = 0.0, 0.0, 1.0
    x = np.empty_like(y)
    x[0], x[-1] = 0.0, 1.0
    ascending = levels[::-1]
    for points, side in ((at, "left"), (above, "right")):
        x[points] = sorted_searchsorted(split.neg, ascending, side)[::-1]  # normal below level
        np.subtract(n_neg, x[points], out=x[points])  # normal scores >= (or >) level
        x[points] /= n_neg
    return _trapezoid_to(x, y, max_fpr) / max_fpr


def aupro_mvtec(maps: object, masks: object, *, max_fpr: float = 0.3) -> float:
    """AUPRO by the official MVTec AD definition (exact curve, normalised area up to FPR 0.3).

    Every distinct score is a threshold (prediction ``map >= th``); PRO = mean over the
    8-connected regions of all masks of the covered fraction, FPR = predicted normal pixels /
    normal pixels. The curve from (0, 0) to (1, 1) is integrated with the trapezoid rule up to
    ``max_fpr`` (end point linearly interpolated) and divided by ``max_fpr``.

    Args:
        maps: ``(N, H, W)`` (or ``(H, W)``, ``(N, 1, H, W)``) real anomaly maps.
        masks: same shape, binary ground truth (bool or 0/1).
        max_fpr: integration limit.

    Returns:
        The normalised AUPRO in [0, 1]; NaN with a warning when the masks have no region or no
        normal pixel.
    """
    maps_a, masks_a = as_maps(maps, masks)
    split = split_scores(maps_a, masks_a, regions=True)
    return aupro_mvtec_from_split(split, max_fpr=max_fpr)
