"""Defect records: the connected regions of a thresholded anomaly map, as data.

:func:`extract_defects` thresholds a map (``map >= threshold``, inside the ROI when one is
given), labels the 8-connected regions with the metrics' labelling
(:func:`~tipsomaly.metrics.regions.foreground_components`, the partition of
``skimage.measure.label``), drops regions smaller than ``min_area`` pixels and describes each
remaining one as a :class:`DefectRecord`:

- ``bbox`` ``[x0, y0, x1, y1]``: columns ``x0:x1`` and rows ``y0:y1`` of the map, ends
  excluded (as a PIL box or a numpy slice; width ``x1 − x0``), in original pixels;
- ``area_px``: the region's pixel count (not its box's), and ``area_mm2`` = ``area_px ·
  pixel_size_mm²`` when the pixel size is known;
- ``peak`` and ``mean``: the highest and the mean map value over the region's pixels;
- ``centroid`` ``[x, y]``: the mean column and row index of its pixels;
- ``rle`` (optional): the region as COCO uncompressed RLE, ``{"size": [H, W], "counts": [...]}``
  (column-major runs, starting with a run of background), readable by ``pycocotools``.

Records are numbered ``id`` = 1, 2, … by decreasing peak (the most certain defect first; ties
in scan order). Numpy only: the work is proportional to the pixels above the threshold, and no
full-size label image is made.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..metrics.regions import foreground_components, join
from .decision import decide

__all__ = ["DEFECT_COLUMNS", "DefectRecord", "extract_defects", "rle_decode", "rle_encode"]

#: ``defects.csv``'s columns after the image's own (name, path, class_name)
DEFECT_COLUMNS = ("defect", "x0", "y0", "x1", "y1", "area_px", "area_mm2", "peak", "mean")
DEFECT_COLUMNS += ("centroid_x", "centroid_y")


@dataclass(frozen=True)
class DefectRecord:
    """One connected region of ``map >= threshold`` (see the module doc for each field)."""

    id: int
    bbox: tuple[int, int, int, int]
    area_px: int
    area_mm2: float | None
    peak: float
    mean: float
    centroid: tuple[float, float]
    rle: dict[str, list[int]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON record (``scores.json``'s ``defects`` entries)."""
        out: dict[str, Any] = {
            "id": self.id,
            "bbox": list(self.bbox),
            "area_px": self.area_px,
            "area_mm2": self.area_mm2,
            "peak": self.peak,
            "mean": self.mean,
            "centroid": list(self.centroid),
        }
        if self.rle is not None:
            out["rle"] = self.rle
        return out

    def csv_cells(self) -> dict[str, Any]:
        """The :data:`DEFECT_COLUMNS` values of ``defects.csv``."""
        values = (self.id, *self.bbox, self.area_px, self.area_mm2, self.peak, self.mean)
        return dict(zip(DEFECT_COLUMNS, (*values, *self.centroid), strict=True))


def extract_defects(
    anomaly_map: np.ndarray,
    threshold: float,
    *,
    roi: np.ndarray | None = None,
    min_area: int = 1,
    pixel_size_mm: float | None = None,
    rle: bool = False,
) -> list[DefectRecord]:
    """The defect records of an (H, W) map: regions of ``map >= threshold`` (see module doc).

    Args:
        anomaly_map: (H, W) real map (NaN never counts as above the threshold).
        threshold: pixel threshold; a pixel belongs to a defect when ``map >= threshold``.
        roi: (H, W) bool, True = inspected; pixels outside it never belong to a defect.
        min_area: regions of fewer pixels are dropped (specks).
        pixel_size_mm: side of one pixel in mm: fills ``area_mm2``.
        rle: add each region's COCO RLE.

    Memory: the map is labelled in bands of about :data:`BAND_PIXELS` pixels (regions that
    cross a band's edge are joined afterwards), so a 20-MP map above the threshold everywhere
    costs about what one band does, not tens of bytes per pixel of the image.

    Raises:
        ValueError: a map that is not 2-D, a ROI of another shape, ``min_area`` < 1 or a
            pixel size <= 0.

    Example:
        >>> m = np.zeros((4, 6), np.float32); m[1:3, 2:5] = 0.9
        >>> [d.bbox for d in extract_defects(m, 0.5)]
        [(2, 1, 5, 3)]
    """
    m = np.asarray(anomaly_map)
    if m.ndim != 2:
        raise ValueError(f"expected an (H, W) anomaly map, got shape {m.shape}")
    if roi is not None and np.shape(roi) != m.shape:
        raise ValueError(f"the ROI is {np.shape(roi)}, the map {m.shape}")
    if isinstance(min_area, bool) or int(min_area) != min_area or min_area < 1:
        raise ValueError(f"min_area must be an integer >= 1, got {min_area!r}")
    if pixel_size_mm is not None and not (math.isfinite(pixel_size_mm) and pixel_size_mm > 0):
        raise ValueError(f"pixel_size_mm must be > 0, got {pixel_size_mm!r}")
    height, width = m.shape
    parts, edges = _band_components(m, threshold, roi, max(1, BAND_PIXELS // max(width, 1)))
    if not parts:
        return []
    stats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    n = stats["area"].size
    root = join(np.arange(n), list(edges))  # each part's root: its group's smallest id
    # regions = groups of band components with one root; the root is the region's first
    # component in scan order, so its seed is the region's first pixel
    roots, group = np.unique(root, return_inverse=True)
    count = roots.size
    area = np.bincount(group, weights=stats["area"], minlength=count).astype(np.int64)
    total = np.bincount(group, weights=stats["sum"], minlength=count)
    sum_x = np.bincount(group, weights=stats["sum_x"], minlength=count)
    sum_y = np.bincount(group, weights=stats["sum_y"], minlength=count)
    x0, y0, x1, y1, peak = (np.full(count, v) for v in (width, height, -1, -1, -np.inf))
    np.minimum.at(x0, group, stats["x0"])
    np.minimum.at(y0, group, stats["y0"])
    np.maximum.at(x1, group, stats["x1"])
    np.maximum.at(y1, group, stats["y1"])
    np.maximum.at(peak, group, stats["peak"])
    seed = stats["seed"][roots]
    keep = np.flatnonzero(area >= min_area)
    ranked = sorted(keep.tolist(), key=lambda g: (-peak[g], g))
    scale = None if pixel_size_mm is None else float(pixel_size_mm) ** 2
    records = []
    for number, g in enumerate(ranked, start=1):
        a = int(area[g])
        box = (int(x0[g]), int(y0[g]), int(x1[g]), int(y1[g]))
        records.append(
            DefectRecord(
                id=number,
                bbox=box,
                area_px=a,
                area_mm2=None if scale is None else float(f"{a * scale:.12g}"),
                peak=float(peak[g]),
                mean=float(total[g] / a),
                centroid=(float(sum_x[g] / a), float(sum_y[g] / a)),
                rle=_region_rle(m, threshold, roi, box, int(seed[g])) if rle else None,
            )
        )
    return records


#: pixels labelled at a time by :func:`extract_defects` (bands of whole rows)
BAND_PIXELS = 1 << 20


def _above(m: np.ndarray, threshold: float, roi: np.ndarray | None, rows: slice) -> np.ndarray:
    mask = decide(m[rows], threshold)
    if roi is not None:
        mask &= np.asarray(roi[rows], dtype=bool)
    return mask


def _band_components(
    m: np.ndarray, threshold: float, roi: np.ndarray | None, band: int
) -> tuple[list[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]:
    """Label ``map >= threshold`` band by band: per band, each component's statistics
    (global ids in scan order), and the pairs of ids that touch across band edges."""
    height, width = m.shape
    parts: list[dict[str, np.ndarray]] = []
    left: list[np.ndarray] = []
    right: list[np.ndarray] = []
    offset = 0
    last_row: np.ndarray | None = None  # the previous band's last row: global ids, -1 = none
    for r0 in range(0, height, band):
        r1 = min(r0 + band, height)
        mask = _above(m, threshold, roi, slice(r0, r1))
        component, count = foreground_components(mask[None])
        if count == 0:
            last_row = None
            continue
        flat = np.flatnonzero(mask)
        del mask
        rows, cols = np.divmod(flat, width)
        values = m[r0:r1].reshape(-1)[flat].astype(np.float64)
        ids = component + offset
        area = np.bincount(component, minlength=count)
        order = np.argsort(component, kind="stable")
        starts = np.concatenate(([0], np.cumsum(area)[:-1]))
        sorted_cols, sorted_rows, sorted_vals = cols[order], rows[order], values[order]
        # each component's first pixel: components are numbered in order of first appearance
        is_first = np.ones(component.size, dtype=bool)
        is_first[1:] = component[1:] > np.maximum.accumulate(component)[:-1]
        first = flat[is_first]
        parts.append(
            {
                "area": area.astype(np.float64),
                "sum": np.add.reduceat(sorted_vals, starts),
                "sum_x": np.bincount(component, weights=cols, minlength=count),
                "sum_y": np.bincount(component, weights=rows + r0, minlength=count),
                "x0": np.minimum.reduceat(sorted_cols, starts),
                "x1": np.maximum.reduceat(sorted_cols, starts) + 1,
                "y0": np.minimum.reduceat(sorted_rows, starts) + r0,
                "y1": np.maximum.reduceat(sorted_rows, starts) + 1 + r0,
                "peak": np.maximum.reduceat(sorted_vals, starts),
                "seed": first + r0 * width,
            }
        )
        del order, sorted_cols, sorted_rows, sorted_vals, values
        if last_row is not None:  # 8-connected neighbours across the band edge
            top = np.full(width, -1, dtype=np.int64)
            on_top = rows == 0
            top[cols[on_top]] = ids[on_top]
            for dx in (-1, 0, 1):
                here = np.arange(max(0, -dx), width - max(0, dx))
                a, b = top[here], last_row[here + dx]
                hit = (a >= 0) & (b >= 0)
                left.append(a[hit])
                right.append(b[hit])
        last_row = np.full(width, -1, dtype=np.int64)
        on_bottom = rows == r1 - r0 - 1
        last_row[cols[on_bottom]] = ids[on_bottom]
        offset += count
    empty = np.empty(0, dtype=np.int64)
    edges = (np.concatenate(left) if left else empty, np.concatenate(right) if right else empty)
    return parts, edges


def _region_rle(
    m: np.ndarray,
    threshold: float,
    roi: np.ndarray | None,
    box: tuple[int, int, int, int],
    seed: int,
) -> dict[str, list[int]]:
    """One region's COCO RLE: its box's pixels above the threshold labelled again, the
    component holding its first pixel (``seed``, a flat index of the map) kept. A region lies
    within its box and is connected through its own pixels, so that component is the
    region, whatever else the box holds."""
    height, width = m.shape
    x0, y0, x1, y1 = box
    crop = m[y0:y1, x0:x1] >= threshold
    if roi is not None:
        crop &= np.asarray(roi[y0:y1, x0:x1], dtype=bool)
    component, _ = foreground_components(crop[None])
    flat = np.flatnonzero(crop)
    sy, sx = divmod(seed, width)
    at = int(np.searchsorted(flat, (sy - y0) * (x1 - x0) + (sx - x0)))
    mine = flat[component == component[at]]
    rows, cols = np.divmod(mine, x1 - x0)
    return rle_encode(rows + y0, cols + x0, (height, width))


def rle_encode(rows: np.ndarray, cols: np.ndarray, image_hw: tuple[int, int]) -> dict:
    """Pixels (row, column) of one region → COCO uncompressed RLE over an (H, W) image.

    COCO counts runs in column-major order (down each column, then the next), alternating
    background and foreground and starting with background (possibly 0).
    """
    height, width = (int(v) for v in image_hw)
    linear = np.unique(np.asarray(cols, np.int64) * height + np.asarray(rows, np.int64))
    counts: list[int] = []
    if linear.size:
        breaks = np.flatnonzero(np.diff(linear) != 1)
        run_starts = np.concatenate(([linear[0]], linear[breaks + 1]))
        run_ends = np.concatenate((linear[breaks] + 1, [linear[-1] + 1]))
        gaps = run_starts - np.concatenate(([0], run_ends[:-1]))
        pairs = np.stack([gaps, run_ends - run_starts], axis=1).reshape(-1)
        counts = [int(v) for v in pairs]
        tail = height * width - int(run_ends[-1])
        if tail:
            counts.append(tail)
    else:
        counts = [height * width]
    return {"size": [height, width], "counts": counts}


def rle_decode(rle: dict) -> np.ndarray:
    """COCO uncompressed RLE → (H, W) bool mask (the inverse of :func:`rle_encode`)."""
    height, width = rle["size"]
    flat = np.zeros(height * width, dtype=bool)
    position, value = 0, False
    for run in rle["counts"]:
        if value:
            flat[position : position + run] = True
        position += run
        value = not value
    return flat.reshape(width, height).T
