"""AUPRO (area under the per-region overlap curve): ZSAD-paper and official MVTec AD forms."""

from __future__ import annotations

import numpy as np

from ._arrays import as_maps, binary_chunk, check_finite_range, row_chunks, undefined
from ._split import SplitScores, chunks, sorted_searchsorted, split_scores
from .regions import foreground_components


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


_INDEX_BLOCK = 1 << 16


class _ThresholdIndex:
    """Exact ``np.searchsorted(thresholds, v, "left")`` (thresholds below v) for ZSAD thresholds.

    The thresholds are evenly spaced up to float rounding, so the index is guessed from the
    spacing, then checked and corrected by comparing ``v`` with the thresholds themselves, in
    the thresholds' dtype (the reference's ``map > th``). About 4x faster than a binary search.
    """

    def __init__(self, thresholds: np.ndarray) -> None:
        self.thresholds = thresholds
        self.n = thresholds.size
        # bounds[k] = thresholds[k - 1] with -inf / +inf sentinels: the answer k for v is the
        # one with bounds[k] < v <= bounds[k + 1].
        self.bounds = np.concatenate(([-np.inf], thresholds, [np.inf])).astype(thresholds.dtype)
        self.lo = thresholds[0]
        span = float(thresholds[-1]) - float(thresholds[0])
        self.scale = thresholds.dtype.type((self.n - 1) / span if span > 0 else 0.0)

    def __call__(self, values: np.ndarray) -> np.ndarray:
        """``(n,)`` scores -> ``(n,)`` intp counts of thresholds strictly below each score."""
        out = np.empty(values.size, dtype=np.intp)
        for start in range(0, values.size, _INDEX_BLOCK):  # cache-sized blocks
            out[start : start + _INDEX_BLOCK] = self._block(values[start : start + _INDEX_BLOCK])
        return out

    def _block(self, values: np.ndarray) -> np.ndarray:
        guess = values - self.lo
        guess *= self.scale
        k = guess.astype(np.intp)
        del guess
        k += 1
        np.clip(k, 0, self.n, out=k)
        for _ in range(4):  # the guess is at most one off, next to a threshold
            too_high = self.bounds[k] >= values
            too_low = self.bounds[k + 1] < values
            if not (too_high.any() or too_low.any()):
                return k
            k -= too_high
            k += too_low
        # Irregular spacing (float32 thresholds over a range of a few ulps): binary search.
        return np.searchsorted(self.thresholds, values, side="left")


def _zsad_area(fpr: np.ndarray, pro: np.ndarray, max_fpr: float) -> float:
    """Area of the ZSAD curve: points with FPR < max_fpr, FPR rescaled min–max, trapezoid."""
    keep = fpr < max_fpr
    if np.count_nonzero(keep) < 2:
        n_th = fpr.size
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

    Thresholds ``np.arange(min, max, (max - min) / 200)`` over all maps (see
    :func:`zsad_thresholds`), prediction ``map > th``; for each threshold, PRO = mean over the
    8-connected regions of all masks of (region pixels predicted anomalous / region area) and
    FPR = normal pixels predicted anomalous / normal pixels. The points with FPR < ``max_fpr``
    are kept, their FPRs rescaled min–max to [0, 1] and PRO integrated over them with the
    trapezoid rule. This is NOT the official MVTec AUPRO (see :func:`aupro_mvtec`).

    Two streaming passes over the maps (min/max, then per-threshold counts image chunk by image
    chunk): no sort, and memory independent of the number of images.

    Args:
        maps: ``(N, H, W)`` (or ``(H, W)``, ``(N, 1, H, W)``) real anomaly maps.
        masks: same shape, binary ground truth (bool or 0/1).
        num_thresholds: the 200 of the threshold step.
        max_fpr: FPR limit of the kept points.

    Returns:
        The AUPRO in [0, 1]; NaN with a warning when undefined (no region, no normal pixel,
        constant maps, fewer than two kept points or all kept FPRs equal).
    """
    curve = pro_curve_zsad(maps, masks, num_thresholds=num_thresholds)
    if curve is None:
        return float("nan")
    return _zsad_area(*curve, max_fpr)


def pro_curve_zsad(
    maps: object, masks: object, *, num_thresholds: int = 200
) -> tuple[np.ndarray, np.ndarray] | None:
    """The per-region overlap curve of :func:`aupro_zsad`: ``(fpr, pro)`` at its thresholds,
    ascending (FPR and PRO falling), not cut at any FPR; None (warned) where the AUPRO is
    undefined for want of a region, a normal pixel or distinct scores."""
    maps_a, masks_a = as_maps(maps, masks)
    lo, hi = maps_a.min(), maps_a.max()
    if np.issubdtype(maps_a.dtype, np.floating):
        check_finite_range(lo, hi, "maps")
    chunks_ = list(row_chunks(maps_a.shape[0], maps_a[0].size))
    if not lo < hi:
        for rows in chunks_:
            binary_chunk(masks_a[rows], "masks")
        undefined("AUPRO", "all scores are equal")
        return None
    thresholds = zsad_thresholds(lo, hi, num_thresholds)
    n_th = thresholds.size
    index = _ThresholdIndex(thresholds)

    # k = number of thresholds below a score: the pixel is predicted anomalous at thresholds
    # 0 .. k - 1. Histograms over k give the normal pixels above every threshold and, weighted
    # by 1 / (area of the pixel's region), the summed region overlaps.
    normal_hist = np.zeros(n_th + 1, dtype=np.int64)
    overlap_hist = np.zeros(n_th + 1)
    n_regions = 0
    for rows in chunks_:
        mask = binary_chunk(masks_a[rows], "masks")
        k = index(maps_a[rows].reshape(-1))
        k_anomalous = k[mask.reshape(-1)]
        normal_hist += np.bincount(k, minlength=n_th + 1)
        normal_hist -= np.bincount(k_anomalous, minlength=n_th + 1)
        component, count = foreground_components(mask)
        if count:
            weight = 1.0 / np.bincount(component, minlength=count)[component]
            overlap_hist += np.bincount(k_anomalous, weights=weight, minlength=n_th + 1)
        n_regions += count
    n_normal = int(normal_hist.sum())
    if n_regions == 0:
        undefined("AUPRO", "the masks have no anomalous region")
        return None
    if n_normal == 0:
        undefined("AUPRO", "the masks have no normal pixel")
        return None
    # Pixels above threshold j are those with k > j.
    fpr = (n_normal - np.cumsum(normal_hist)[:n_th]) / n_normal
    pro = np.cumsum(overlap_hist[::-1])[::-1][1:] / n_regions
    return fpr, pro


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
    """Official MVTec AD AUPRO of split pixel scores (see :func:`aupro_mvtec`).

    Raises:
        ValueError: ``max_fpr`` outside (0, 1].
    """
    if not 0.0 < max_fpr <= 1.0:  # also refuses NaN
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    curve = pro_curve_mvtec_from_split(split)
    if curve is None:
        return float("nan")
    return _trapezoid_to(*curve, max_fpr) / max_fpr


def pro_curve_mvtec_from_split(split: SplitScores) -> tuple[np.ndarray, np.ndarray] | None:
    """The exact per-region overlap curve of :func:`aupro_mvtec_from_split`: ``(fpr, pro)``
    from (0, 0) to (1, 1), FPR non-decreasing; None (warned) without a region or a normal
    pixel."""
    if split.n_regions == 0:
        undefined("AUPRO", "the masks have no anomalous region")
        return None
    if split.n_neg == 0:
        undefined("AUPRO", "the masks have no normal pixel")
        return None
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
    return x, y


def aupro_mvtec(maps: object, masks: object, *, max_fpr: float = 0.3) -> float:
    """AUPRO by the official MVTec AD definition (exact curve, normalised area up to FPR 0.3).

    Every distinct score is a threshold (prediction ``map >= th``); PRO = mean over the
    8-connected regions of all masks of the covered fraction, FPR = normal pixels predicted
    anomalous / normal pixels. The curve from (0, 0) to (1, 1) is integrated with the trapezoid
    rule up to ``max_fpr`` (end point linearly interpolated) and divided by ``max_fpr``.

    Args:
        maps: ``(N, H, W)`` (or ``(H, W)``, ``(N, 1, H, W)``) real anomaly maps.
        masks: same shape, binary ground truth (bool or 0/1).
        max_fpr: integration limit, in (0, 1].

    Returns:
        The normalised AUPRO in [0, 1]; NaN with a warning when the masks have no region or no
        normal pixel.
    """
    maps_a, masks_a = as_maps(maps, masks)
    if not 0.0 < max_fpr <= 1.0:  # before the split: the work would be lost
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    split = split_scores(maps_a, masks_a, regions=True, what="masks")
    return aupro_mvtec_from_split(split, max_fpr=max_fpr)
