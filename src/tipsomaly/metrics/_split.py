"""Chunked split of scores into sorted normal scores and anomalous scores (with region ids)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import _arrays
from ._arrays import binary_chunk, check_finite_range, row_chunks
from .regions import foreground_components

#: Sorted queries handled per ``np.searchsorted`` call in :func:`sorted_searchsorted`.
_SEARCH_BLOCK = 4096


@dataclass
class SplitScores:
    """Scores split by ground truth; the memory is about one copy of the scores.

    Attributes:
        neg: ``(n_neg,)`` scores of the normal samples (label 0), sorted ascending.
        pos: ``(n_pos,)`` scores of the anomalous samples (label 1), in scan order.
        region: ``(n_pos,)`` int32 region index of each anomalous pixel, or None.
        area: ``(n_regions,)`` int64 pixel count of each region, or None.
    """

    neg: np.ndarray
    pos: np.ndarray
    region: np.ndarray | None = None
    area: np.ndarray | None = None
    _pos_sorted: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_neg(self) -> int:
        return int(self.neg.size)

    @property
    def n_pos(self) -> int:
        return int(self.pos.size)

    @property
    def n_regions(self) -> int:
        return 0 if self.area is None else int(self.area.size)

    def pos_sorted(self) -> np.ndarray:
        """The anomalous scores sorted ascending (computed once)."""
        if self._pos_sorted is None:
            self._pos_sorted = np.sort(self.pos)
        return self._pos_sorted

    def extremes(self) -> tuple[np.generic, np.generic]:
        """Minimum and maximum over all scores, as scalars of the scores' dtype."""
        lows, highs = [], []
        if self.n_neg:
            lows.append(self.neg[0])
            highs.append(self.neg[-1])
        if self.n_pos:
            lows.append(self.pos.min())
            highs.append(self.pos.max())
        return min(lows), max(highs)


def split_scores(
    scores: np.ndarray, labels: np.ndarray, *, regions: bool, what: str = "labels"
) -> SplitScores:
    """Split scores by binary labels, chunk by chunk along the first axis.

    Args:
        scores: real array of any shape (``(N, H, W)`` when ``regions``).
        labels: array of the same shape, binary (bool or 0/1); validated here.
        regions: also label the 8-connected regions of each ``labels[i]`` (2-D images).
        what: the name of ``labels`` in error messages (``"masks"`` for pixel metrics).

    Returns:
        The :class:`SplitScores`; raises ``ValueError`` on non-binary labels or non-finite scores.
    """
    n_rows = scores.shape[0]
    row_size = int(np.prod(scores.shape[1:], dtype=np.int64))
    n_pos = 0
    for rows in row_chunks(n_rows, row_size):
        n_pos += int(np.count_nonzero(binary_chunk(labels[rows], what)))

    neg = np.empty(scores.size - n_pos, dtype=scores.dtype)
    pos = np.empty(n_pos, dtype=scores.dtype)
    region = np.empty(n_pos, dtype=np.int32) if regions else None
    areas: list[np.ndarray] = []
    i_neg = i_pos = n_regions = 0
    for rows in row_chunks(n_rows, row_size):
        mask = binary_chunk(labels[rows], what)
        values = scores[rows]
        chunk_pos = values[mask]
        chunk_neg = values[~mask]
        pos[i_pos : i_pos + chunk_pos.size] = chunk_pos
        neg[i_neg : i_neg + chunk_neg.size] = chunk_neg
        if regions:
            component, count = foreground_components(mask)
            region[i_pos : i_pos + chunk_pos.size] = component + n_regions
            areas.append(np.bincount(component, minlength=count))
            n_regions += count
        i_pos += chunk_pos.size
        i_neg += chunk_neg.size
    neg.sort()  # in place; numpy's vectorised sort is faster than any histogramming here
    split = SplitScores(
        neg=neg,
        pos=pos,
        region=region,
        area=np.concatenate(areas).astype(np.int64) if regions else None,
    )
    if np.issubdtype(scores.dtype, np.floating):
        lo, hi = split.extremes()
        check_finite_range(lo, hi, "scores")
    return split


def sorted_searchsorted(haystack: np.ndarray, needles: np.ndarray, side: str) -> np.ndarray:
    """``np.searchsorted(haystack, needles, side)`` for sorted ``needles``, as int64.

    Needles are processed in blocks, each searched only in the slice of ``haystack`` that
    its first and last needle bound; this keeps the searches in cache and is several times
    faster than one call when both arrays are large.
    """
    out = np.empty(needles.size, dtype=np.int64)
    if needles.size == 0:
        return out
    starts = np.arange(0, needles.size, _SEARCH_BLOCK)
    ends = np.minimum(starts + _SEARCH_BLOCK, needles.size)
    lows = np.searchsorted(haystack, needles[starts], side=side)
    highs = np.searchsorted(haystack, needles[ends - 1], side=side)
    for start, end, low, high in zip(starts, ends, lows, highs, strict=True):
        out[start:end] = np.searchsorted(haystack[low:high], needles[start:end], side=side)
        out[start:end] += low
    return out


def chunks(n: int) -> list[slice]:
    """Slices of ``range(n)`` of ``_arrays.CHUNK_ELEMENTS`` each."""
    step = _arrays.CHUNK_ELEMENTS
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]
