"""Heat-map colouring of anomaly maps and their overlay on the image, in plain numpy + Pillow.

Conventions: maps are float arrays (H, W), higher = more anomalous; TipsOmaly's maps are the
per-pixel abnormal probability, in [0, 1]. Images are 8-bit RGB (H, W, 3). Colours follow the
classic "jet" ramp: 0 = dark blue, 0.5 = green, 1 = dark red.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

#: How a map's values become colours: ``fixed`` maps [0, 1] (absolute, comparable across
#: images; values outside are clipped) and ``per-image`` stretches each map's own min..max.
SCALES = ("fixed", "per-image")
DEFAULT_ALPHA = 0.5


def normalize_map(anomaly_map: np.ndarray, scale: str = "fixed") -> np.ndarray:
    """(H, W) map → (H, W) float32 in [0, 1] by ``scale`` (see :data:`SCALES`).

    ``fixed`` clips to [0, 1]; ``per-image`` maps min → 0 and max → 1 (a constant map → 0).
    NaN becomes 0.
    """
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    m = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) map, got shape {m.shape}")
    if scale == "per-image" and m.size:
        lo, hi = float(m.min()), float(m.max())
        m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    return np.clip(m, 0.0, 1.0)


def jet(values: np.ndarray) -> np.ndarray:
    """Values in [0, 1] of any shape (...) → uint8 RGB colours (..., 3) on the jet ramp.

    Piecewise linear: each channel is ``clip(1.5 - |4 v - c|, 0, 1)`` with c = 3 (red),
    2 (green), 1 (blue), which gives dark blue at 0, cyan, green at 0.5, yellow, dark red at 1.
    """
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)[..., None]
    centres = np.array([3.0, 2.0, 1.0], dtype=np.float32)
    rgb = np.clip(1.5 - np.abs(4.0 * v - centres), 0.0, 1.0)
    return np.round(rgb * 255.0).astype(np.uint8)


def colorize(anomaly_map: np.ndarray, scale: str = "fixed") -> np.ndarray:
    """(H, W) map → (H, W, 3) uint8 heat map (:func:`normalize_map` then :func:`jet`)."""
    return jet(normalize_map(anomaly_map, scale))


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {arr.dtype}")
    return arr[..., :3]


def resize_map(anomaly_map: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """(h, w) float map → (H, W) float32, bilinear (Pillow mode ``F``); unchanged if same size."""
    m = np.asarray(anomaly_map, dtype=np.float32)
    if m.shape == tuple(size_hw):
        return m
    h, w = size_hw
    im = Image.fromarray(np.ascontiguousarray(m), mode="F")
    return np.asarray(im.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


def overlay(
    image: Image.Image | np.ndarray,
    anomaly_map: np.ndarray,
    *,
    alpha: float = DEFAULT_ALPHA,
    scale: str = "fixed",
) -> np.ndarray:
    """Blend the heat map of ``anomaly_map`` over ``image``: ``(1 - alpha) image + alpha heat``.

    Args:
        image: PIL image (any mode) or uint8 array (H, W) / (H, W, 3|4); alpha is dropped.
        anomaly_map: float (h, w); resized bilinearly to (H, W) when its size differs.
        alpha: weight of the heat map, in [0, 1].
        scale: ``"fixed"`` ([0, 1] absolute) or ``"per-image"`` (min-max); see :data:`SCALES`.

    Returns:
        uint8 array (H, W, 3) at the image's size.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _as_rgb_array(image)
    heat = colorize(resize_map(anomaly_map, rgb.shape[:2]), scale)
    blended = (1.0 - alpha) * rgb.astype(np.float32) + alpha * heat.astype(np.float32)
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)


def save_overlay(
    path: str | os.PathLike,
    image: Image.Image | np.ndarray,
    anomaly_map: np.ndarray,
    *,
    alpha: float = DEFAULT_ALPHA,
    scale: str = "fixed",
) -> Path:
    """Write :func:`overlay` as an RGB PNG at ``path`` (parent folders created); returns it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(overlay(image, anomaly_map, alpha=alpha, scale=scale), mode="RGB").save(p)
    return p


def save_mask(path: str | os.PathLike, anomaly_map: np.ndarray, threshold: float) -> Path:
    """Write ``anomaly_map >= threshold`` as a 0/255 8-bit grey PNG at ``path``; returns it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    mask = (np.asarray(anomaly_map) >= threshold).astype(np.uint8) * 255
    Image.fromarray(mask, mode="L").save(p)
    return p


def save_map(path: str | os.PathLike, anomaly_map: np.ndarray) -> Path:
    """Write the raw map as a float32 (H, W) ``.npy`` file at ``path``; returns it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.save(p, np.asarray(anomaly_map, dtype=np.float32), allow_pickle=False)
    return p
