"""The published TipsOmaly pipeline's inference path, step by step, as a speed baseline.

What the authors' ``test.py`` does per image, written here from reading it (no code taken),
on our vision tower with the same weights so the two pipelines can be timed side by side:

1. data: each image through PIL (``convert("RGB")``, a bilinear resize to S×S), then
   ``ToTensor`` (uint8 HWC → float CHW / 255) and a no-op normalisation, in batches of 8
   (their ``DataLoader(batch_size=8)`` without worker processes);
2. the vision tower in fp32, its attention as the official TIPS encoder runs it without
   xFormers: explicit ``softmax(q·kᵀ·scale)·v`` (three matrix products and a softmax per head),
   where ours calls PyTorch's fused ``scaled_dot_product_attention``;
3. L2-normalised CLS and patch tokens, ``softmax(feature · textᵀ / temperature)`` for each
   CLS token (class text) and the patches (pixel text), the patches' largest abnormal
   probability added to each CLS score;
4. the maps: the patch grid's ``(1 − p_normal + p_abnormal)/2`` upsampled bilinearly to S,
   then scipy's ``gaussian_filter`` (σ 4) on each map in a Python loop, as numpy and back;
5. per image, the scores and the map moved to lists one by one.

The text side runs once per class in both pipelines and stays outside the timing.
``check_agreement`` compares its maps and scores with ``Detector.predict`` on the same
images: it computes the same method (the golden tests pin ours to the reference's outputs).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy.ndimage import gaussian_filter

from tipsomaly.tips.attention import Attention
from tipsomaly.tips.model import TipsModel

#: the published test loop's batch size
BATCH = 8


def _explicit_attention(self: Attention, x: torch.Tensor) -> torch.Tensor:
    b, n, d = x.shape
    heads = self.num_heads
    q, k, v = self.qkv(x).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    weights = ((q * (d // heads) ** -0.5) @ k.transpose(-2, -1)).softmax(dim=-1)
    return self.proj((weights @ v).transpose(1, 2).reshape(b, n, d))


@contextlib.contextmanager
def explicit_attention(model: TipsModel) -> Iterator[None]:
    """The vision tower's attention as explicit matrix products while the block runs."""
    blocks = [m for m in model.vision.modules() if isinstance(m, Attention)]
    for m in blocks:
        m.forward = _explicit_attention.__get__(m)
    try:
        yield
    finally:
        for m in blocks:
            del m.forward


def _to_tensor(image: np.ndarray, size: int) -> torch.Tensor:
    pil = Image.fromarray(image).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()).permute(2, 0, 1).float() / 255
    mean, std = torch.zeros(3, 1, 1), torch.ones(3, 1, 1)  # the published no-op normalisation
    return (x - mean) / std


def _probs(features: torch.Tensor, text: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.softmax(features @ text.transpose(-1, -2) / temperature, dim=-1)


def run_published(
    model: TipsModel,
    images: list[np.ndarray],
    size: int,
    class_text: torch.Tensor,
    pixel_text: torch.Tensor,
    sigma: float = 4.0,
) -> tuple[float, np.ndarray, np.ndarray]:
    """``images`` (uint8 HWC) through the published inference path → (seconds, maps (n, S, S),
    image scores (n,) of the first CLS token). ``class_text`` and ``pixel_text`` are (2, D)
    [normal, abnormal] unit embeddings; the model runs in fp32."""
    grid = size // model.vision.config.patch_size
    scores: list[torch.Tensor] = []
    maps: list[torch.Tensor] = []
    start = time.perf_counter()
    with explicit_attention(model), torch.no_grad():
        for first in range(0, len(images), BATCH):
            batch = torch.stack([_to_tensor(im, size) for im in images[first : first + BATCH]])
            cls1, _cls2, patches = (
                f / f.norm(dim=-1, keepdim=True).clamp(min=1e-3) for f in model.vision(batch)
            )
            text = class_text[None].expand(len(batch), -1, -1)
            global1 = _probs(cls1, text, model.temperature).squeeze(1)
            local = _probs(patches, pixel_text[None].expand(len(batch), -1, -1), model.temperature)
            global1 = global1 + local.max(dim=1)[0]
            regrid = local.reshape(len(batch), grid, grid, 2).permute(0, 3, 1, 2)
            up = F.interpolate(regrid, (size, size), mode="bilinear").permute(0, 2, 3, 1)
            rough = (1 - up[..., 0] + up[..., 1]) / 2
            smoothed = torch.stack(
                [torch.from_numpy(gaussian_filter(m, sigma=sigma)) for m in rough.numpy()]
            )
            for i in range(len(batch)):
                scores.append(global1[i][1].cpu())
                maps.append(smoothed[i].cpu())
    seconds = time.perf_counter() - start
    return seconds, torch.stack(maps).numpy(), torch.stack(scores).numpy()
