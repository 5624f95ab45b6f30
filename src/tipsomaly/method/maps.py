"""The anomaly-map recipe: patch probabilities → upsampled, Gaussian-smoothed pixel maps."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel1d(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """scipy.ndimage's 1-D Gaussian: radius ``int(truncate·sigma + 0.5)``, weights sum to 1."""
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * (x / float(sigma)) ** 2)
    return weights / weights.sum()


def reflect_indices(n: int, radius: int, device: torch.device | None = None) -> torch.Tensor:
    """Indices padding a length-``n`` axis by ``radius`` in scipy's ``"reflect"`` mode.

    ``reflect`` repeats the edge sample (``d c b a | a b c d | d c b a``), also when the
    padding is longer than the axis.
    """
    i = torch.arange(-radius, n + radius, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def gaussian_blur(maps: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Smooth (B, H, W) maps like ``scipy.ndimage.gaussian_filter(m, sigma, mode="reflect")``.

    Batched and separable (rows then columns), in the maps' dtype (fp32 expected). ``sigma``
    is in pixels; ``sigma <= 0`` returns the maps unchanged.
    """
    if sigma <= 0:
        return maps
    if maps.ndim != 3:
        raise ValueError(f"expected maps of shape (B, H, W), got {tuple(maps.shape)}")
    kernel = gaussian_kernel1d(sigma, truncate).to(device=maps.device, dtype=maps.dtype)
    radius = (kernel.numel() - 1) // 2
    b, h, w = maps.shape
    x = maps.index_select(2, reflect_indices(w, radius, maps.device))
    x = F.conv1d(x.reshape(b * h, 1, -1), kernel.view(1, 1, -1)).reshape(b, h, w)
    x = x.index_select(1, reflect_indices(h, radius, maps.device)).transpose(1, 2)
    x = F.conv1d(x.reshape(b * w, 1, -1), kernel.view(1, 1, -1)).reshape(b, w, h)
    return x.transpose(1, 2).contiguous()


def patch_map(patch_probs: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) [normal, abnormal] probabilities → (B, N) ``(1 − p_normal + p_abnormal) / 2``."""
    return (1.0 - patch_probs[..., 0] + patch_probs[..., 1]) / 2.0


def upsample(values: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """(B, gh·gw) or (B, C, gh·gw) values on the patch grid → bilinear (align_corners=False)."""
    squeeze = values.ndim == 2
    if squeeze:
        values = values[:, None]
    b, c, _ = values.shape
    out = F.interpolate(
        values.reshape(b, c, *grid).float(), size=size, mode="bilinear", align_corners=False
    )
    return out[:, 0] if squeeze else out


def anomaly_maps(
    patch_probs: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], sigma: float = 4.0
) -> torch.Tensor:
    """(B, N, 2) patch probabilities → (B, H, W) anomaly maps in [0, 1] at ``size``.

    The paper's recipe: ``(1 − p_normal + p_abnormal)/2`` on the patch grid, bilinear upsampling
    (align_corners=False) to the image size, Gaussian smoothing with ``sigma`` pixels.
    """
    if patch_probs.shape[1] != math.prod(grid):
        raise ValueError(f"{patch_probs.shape[1]} patches do not fill a {grid} grid")
    return gaussian_blur(upsample(patch_map(patch_probs.float()), grid, size), sigma)
