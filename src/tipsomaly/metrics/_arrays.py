"""Conversion and validation of metric inputs (numpy arrays or torch tensors)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import numpy as np

logger = logging.getLogger(__name__)

#: Elements handled at once by the chunked passes; bounds the temporary arrays (each pass
#: allocates a few to some tens of bytes per element of a chunk, i.e. at most ~100 MB).
CHUNK_ELEMENTS = 1 << 20


def as_numpy(x: object, name: str) -> np.ndarray:
    """Return ``x`` as a numpy array without copying when possible.

    Torch tensors are detached and moved to the CPU (torch itself is never imported here);
    bfloat16 tensors are widened to float32 because numpy has no bfloat16.
    """
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        t = x.detach().cpu()
        if str(t.dtype) == "torch.bfloat16":
            t = t.float()
        x = t.numpy()
    arr = np.asarray(x)
    if arr.dtype == object:
        raise TypeError(f"{name} must be a numeric array, got an object array")
    return arr


def check_real(arr: np.ndarray, name: str) -> None:
    """Raise unless ``arr`` holds real numbers (integer or floating, not bool)."""
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)
    ):
        raise TypeError(f"{name} must hold real numbers (integer or floating), got {arr.dtype}")


def check_finite_range(lo: np.generic, hi: np.generic, name: str) -> None:
    """Raise if the extreme values ``lo``/``hi`` of a score array show a NaN or an infinity."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        raise ValueError(f"{name} contains NaN or infinite values")


def binary_chunk(labels: np.ndarray, name: str) -> np.ndarray:
    """Return a boolean copy of one chunk of a 0/1 label array, raising on any other value."""
    if labels.dtype == bool:
        return labels.copy()
    if not (np.issubdtype(labels.dtype, np.integer) or np.issubdtype(labels.dtype, np.floating)):
        raise TypeError(f"{name} must be bool or numeric 0/1, got {labels.dtype}")
    positive = labels != 0
    if not np.all(labels[positive] == 1):
        bad = labels[positive & (labels != 1)]
        raise ValueError(
            f"{name} must be binary (0/1 or bool); found value {bad.flat[0]!r} "
            "(threshold soft or 0/255 masks before computing metrics)"
        )
    return positive


def row_chunks(n_rows: int, row_size: int) -> Iterator[slice]:
    """Slices over the first axis covering about ``CHUNK_ELEMENTS`` elements each."""
    step = max(1, CHUNK_ELEMENTS // max(1, row_size))  # read at call time (tests lower it)
    for start in range(0, n_rows, step):
        yield slice(start, min(start + step, n_rows))


def same_shape(scores: np.ndarray, labels: np.ndarray, names: tuple[str, str]) -> None:
    """Raise a clear error unless both arrays have the same shape."""
    if scores.shape != labels.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, "
            f"got {scores.shape} and {labels.shape}"
        )


def as_maps(maps: object, masks: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate anomaly maps and ground-truth masks and return them as ``(N, H, W)`` arrays.

    Accepted shapes: ``(H, W)`` (one image), ``(N, H, W)`` or ``(N, 1, H, W)``; both arrays must
    have the same shape. Masks must be binary (checked later, chunk by chunk).
    """
    maps_a = as_numpy(maps, "maps")
    masks_a = as_numpy(masks, "masks")
    check_real(maps_a, "maps")
    same_shape(maps_a, masks_a, ("maps", "masks"))
    if maps_a.ndim == 2:
        maps_a, masks_a = maps_a[None], masks_a[None]
    elif maps_a.ndim == 4 and maps_a.shape[1] == 1:
        maps_a, masks_a = maps_a[:, 0], masks_a[:, 0]
    if maps_a.ndim != 3:
        raise ValueError(
            "maps and masks must have shape (H, W), (N, H, W) or (N, 1, H, W), "
            f"got {np.shape(maps)}"
        )
    if maps_a.size == 0:
        raise ValueError(f"maps and masks are empty (shape {np.shape(maps)})")
    return maps_a, masks_a


def as_scores(scores: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    """Validate scores and binary labels of the same (any) shape and return them as arrays."""
    scores_a = as_numpy(scores, "scores")
    labels_a = as_numpy(labels, "labels")
    check_real(scores_a, "scores")
    same_shape(scores_a, labels_a, ("scores", "labels"))
    if scores_a.ndim == 0:
        scores_a, labels_a = scores_a[None], labels_a[None]
    if scores_a.size == 0:
        raise ValueError("scores and labels are empty")
    return scores_a, labels_a


def undefined(metric: str, reason: str) -> float:
    """Log why ``metric`` is undefined and return NaN."""
    logger.warning("%s is undefined (%s); returning nan", metric, reason)
    return float("nan")
