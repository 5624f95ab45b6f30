"""Heat-map colouring of anomaly maps and their overlay on the image, in plain numpy + Pillow.

Conventions: maps are float arrays (H, W), higher = more anomalous; TipsOmaly's maps are the
per-pixel abnormal probability, in [0, 1]. Images are 8-bit RGB (H, W, 3). Colours follow the
classic "jet" ramp: 0 = dark blue, 0.5 = green, 1 = dark red.

Memory: overlays are made at the image's original size, so :func:`colorize` and
:func:`overlay` work in bands of rows (:data:`CHUNK_PIXELS` pixels at a time) into one uint8
output; besides the inputs and that output, they hold only one band's float32 temporaries
(never a full-size float copy of the image or a float (H, W, 3) heat map). The results are
bit-identical to computing the whole array at once.

Defect boxes (:func:`draw_boxes`) are drawn over an overlay as white rectangles with a black
outline (visible on every colour of the ramp), each labelled with its text (``#1 0.83``: the
record's number and peak), line width and text size scaled to the image.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..method.decision import decide

#: How a map's values become colours: ``fixed`` maps [0, 1] (absolute, comparable across
#: images; values outside are clipped) and ``per-image`` stretches each map's own min..max.
SCALES = ("fixed", "per-image")
#: what ``predict --overlay-scale`` offers: :data:`SCALES` and ``threshold``, the image's pixel
#: threshold at the ramp's middle (green) and twice it red (``span=(0, 2 t)`` of
#: :func:`overlay`); ``fixed`` when there is no threshold
OVERLAY_SCALES = (*SCALES, "threshold")
DEFAULT_ALPHA = 0.5
#: Pixels per band of rows in :func:`colorize` and :func:`overlay` (bounds their temporaries:
#: about 65 bytes per pixel of a band, i.e. 17 MB).
CHUNK_PIXELS = 1 << 18


def _bands(height: int, width: int) -> range:
    """Start rows of the bands of about :data:`CHUNK_PIXELS` pixels covering ``height`` rows."""
    return range(0, height, max(1, CHUNK_PIXELS // max(1, width)))


def _finite(m: np.ndarray) -> np.ndarray:
    """float32 copy with NaN → 0, +inf → 1, -inf → 0 (the normalisation's rule)."""
    return np.nan_to_num(np.asarray(m, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)


def _check_map(m: np.ndarray, scale: str) -> None:
    if scale not in SCALES:
        raise ValueError(f"scale must be one of {SCALES}, got {scale!r}")
    if m.ndim != 2:
        raise ValueError(f"expected a 2-D (H, W) map, got shape {m.shape}")


def _range(m: np.ndarray, scale: str) -> tuple[float, float] | None:
    """(min, max) of the finite-ised map, band by band, for ``per-image``; ``None`` for fixed."""
    if scale != "per-image" or not m.size:
        return None
    lo, hi = np.inf, -np.inf
    rows = _bands(*m.shape)
    for r in rows:
        band = _finite(m[r : r + rows.step])
        lo, hi = min(lo, float(band.min())), max(hi, float(band.max()))
    return lo, hi


def _normalize_band(band: np.ndarray, span: tuple[float, float] | None) -> np.ndarray:
    m = _finite(band)
    if span is not None:
        lo, hi = span
        m = (m - np.float32(lo)) / np.float32(hi - lo) if hi > lo else np.zeros_like(m)
    return np.clip(m, 0.0, 1.0)


def normalize_map(anomaly_map: np.ndarray, scale: str = "fixed") -> np.ndarray:
    """(H, W) map → (H, W) float32 in [0, 1] by ``scale`` (see :data:`SCALES`).

    ``fixed`` clips to [0, 1]; ``per-image`` maps min → 0 and max → 1 (a constant map → 0).
    NaN becomes 0.
    """
    m = np.asarray(anomaly_map)
    _check_map(m, scale)
    return _normalize_band(m, _range(m, scale))


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
    """(H, W) map → (H, W, 3) uint8 heat map (:func:`normalize_map` then :func:`jet`).

    Computed band by band (see the module doc): no full-size float temporaries.
    """
    m = np.asarray(anomaly_map)
    _check_map(m, scale)
    span = _range(m, scale)
    out = np.empty((*m.shape, 3), dtype=np.uint8)
    step = _bands(*m.shape).step
    for r in _bands(*m.shape):
        out[r : r + step] = jet(_normalize_band(m[r : r + step], span))
    return out


def _as_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    if isinstance(image, Image.Image):
        rgb = image if image.mode == "RGB" else image.convert("RGB")
        return np.asarray(rgb, dtype=np.uint8)
    arr = np.asarray(image)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got {arr.shape}")
    if arr.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {arr.dtype}")
    return arr[..., :3]


def resize_map(
    anomaly_map: np.ndarray,
    size_hw: tuple[int, int],
    resample: Image.Resampling = Image.Resampling.BILINEAR,
) -> np.ndarray:
    """(h, w) float map → (H, W) float32, bilinear (Pillow mode ``F``; ``resample``: another
    filter); unchanged if same size."""
    m = np.asarray(anomaly_map, dtype=np.float32)
    if m.shape == tuple(size_hw):
        return m
    h, w = size_hw
    im = Image.fromarray(np.ascontiguousarray(m), mode="F")
    return np.asarray(im.resize((w, h), resample), dtype=np.float32)


def overlay(
    image: Image.Image | np.ndarray,
    anomaly_map: np.ndarray,
    *,
    alpha: float = DEFAULT_ALPHA,
    scale: str = "fixed",
    span: tuple[float, float] | None = None,
) -> np.ndarray:
    """Blend the heat map of ``anomaly_map`` over ``image``: ``(1 - alpha) image + alpha heat``.

    Args:
        image: PIL image (any mode) or uint8 array (H, W) / (H, W, 3|4); alpha is dropped.
        anomaly_map: float (h, w); resized bilinearly to (H, W) when its size differs.
        alpha: weight of the heat map, in [0, 1].
        scale: ``"fixed"`` ([0, 1] absolute) or ``"per-image"`` (min-max); see :data:`SCALES`.
        span: ``(low, high)`` map values shown as the ramp's ends, instead of ``scale``'s
            (e.g. ``(0, 2 t)`` puts a threshold ``t`` at the middle colour).

    Returns:
        uint8 array (H, W, 3) at the image's size, computed band by band (module doc).
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    rgb = _as_rgb_array(image)
    height, width = rgb.shape[:2]
    m = resize_map(anomaly_map, (height, width))
    _check_map(m, scale)
    if span is None:
        span = _range(m, scale)
    elif not (math.isfinite(span[0]) and math.isfinite(span[1]) and span[1] > span[0]):
        raise ValueError(f"span must be finite (low, high) with low < high, got {span}")
    out = np.empty((height, width, 3), dtype=np.uint8)
    keep, mix = np.float32(1.0 - alpha), np.float32(alpha)
    step = _bands(height, width).step
    for r in _bands(height, width):
        heat = jet(_normalize_band(m[r : r + step], span)).astype(np.float32)
        blended = keep * rgb[r : r + step].astype(np.float32) + mix * heat
        out[r : r + step] = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    return out


Box = tuple[int, int, int, int]


def draw_boxes(
    image: Image.Image, boxes: Sequence[Box], labels: Sequence[str] | None = None
) -> Image.Image:
    """Draw ``boxes`` ``(x0, y0, x1, y1)`` (ends excluded, original pixels) on an RGB PIL
    image, in place, with optional ``labels``; returns the image."""
    if not boxes:
        return image
    draw = ImageDraw.Draw(image)
    side = min(image.size)
    width = max(1, round(side / 500))
    try:
        font = ImageFont.load_default(size=max(10, round(side / 50)))
    except (TypeError, ImportError):  # Pillow < 10.1 or without FreeType: the bitmap font
        font = ImageFont.load_default()
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        pad = width  # the rectangle around the pixels, not on them
        outer = [x0 - pad - width, y0 - pad - width, x1 - 1 + pad + width, y1 - 1 + pad + width]
        draw.rectangle(outer, outline=(0, 0, 0), width=width)
        draw.rectangle(
            [x0 - pad, y0 - pad, x1 - 1 + pad, y1 - 1 + pad], outline="white", width=width
        )
        if labels is not None and labels[i]:
            size = getattr(font, "size", 10)
            at = (x0 - pad - width, max(0, y0 - pad - width - size - 2 * width))
            draw.text(
                at, labels[i], fill="white", font=font, stroke_width=width, stroke_fill="black"
            )
    return image


def save_overlay(
    path: str | os.PathLike,
    image: Image.Image | np.ndarray,
    anomaly_map: np.ndarray,
    *,
    alpha: float = DEFAULT_ALPHA,
    scale: str = "fixed",
    span: tuple[float, float] | None = None,
    boxes: Sequence[Box] | None = None,
    labels: Sequence[str] | None = None,
) -> Path:
    """Write :func:`overlay` as an RGB PNG at ``path`` (parent folders created), with defect
    ``boxes`` and their ``labels`` drawn (:func:`draw_boxes`); returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    rgb = overlay(image, anomaly_map, alpha=alpha, scale=scale, span=span)
    picture = Image.fromarray(rgb, mode="RGB")
    if boxes:
        draw_boxes(picture, boxes, labels)
    picture.save(p)
    return p


def save_mask(
    path: str | os.PathLike,
    anomaly_map: np.ndarray,
    threshold: float,
    roi: np.ndarray | None = None,
) -> Path:
    """Write ``anomaly_map >= threshold`` (and inside ``roi``, (H, W) bool, when given) as a
    0/255 8-bit grey PNG at ``path``; returns it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    above = decide(np.asarray(anomaly_map), threshold)
    if roi is not None:
        above &= np.asarray(roi, dtype=bool)
    mask = above.view(np.uint8)  # bool → 0/1, no copy
    mask *= 255
    Image.fromarray(mask, mode="L").save(p)
    return p


def save_map(path: str | os.PathLike, anomaly_map: np.ndarray) -> Path:
    """Write the raw map as a float32 (H, W) ``.npy`` file at ``path``; returns it."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.save(p, np.asarray(anomaly_map, dtype=np.float32), allow_pickle=False)
    return p
