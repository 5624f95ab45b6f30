"""The TIPS vision tower: a DINOv2-style ViT with one register token as the 2nd CLS."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .block import Block
from .config import VisionConfig
from .patch_embed import PatchEmbed


class VisionFeatures(NamedTuple):
    """Outputs of the vision tower, after the final LayerNorm, not L2-normalised.

    cls1: (B, 1, D) the 1st CLS token (trained against web alt-text).
    cls2: (B, 1, D) the 2nd CLS token, i.e. the register token (trained against dense captions).
    patches: (B, H/p · W/p, D) patch tokens, row-major over the patch grid.
    """

    cls1: torch.Tensor
    cls2: torch.Tensor
    patches: torch.Tensor


class VisionTransformer(nn.Module):
    """Token order: ``[cls + pos[0]], [registers (no position)], [patches + pos[1:]]``.

    Images are (B, 3, H, W) in [0, 1] (TIPS uses no mean/std normalisation) with H and W
    multiples of the patch size; square or not.
    """

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        d = config.embed_dim
        self.patch_size = config.patch_size
        self.num_register_tokens = config.num_register_tokens
        self.patch_embed = PatchEmbed(config.patch_size, d)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.register_tokens = nn.Parameter(torch.zeros(1, config.num_register_tokens, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + config.pos_embed_grid**2, d))
        # Unused at inference, but present in every checkpoint: kept so loading stays strict.
        self.mask_token = nn.Parameter(torch.zeros(1, d))
        self.blocks = nn.ModuleList(
            Block(d, config.num_heads, config.mlp_hidden_dim, config.ffn, config.layer_scale)
            for _ in range(config.depth)
        )
        self.norm = nn.LayerNorm(d, eps=1e-6)
        self._pos_cache: dict[tuple, torch.Tensor] = {}

    @property
    def compute_dtype(self) -> torch.dtype:
        """The dtype of the matrix multiplications (patch embedding, attention, FFN)."""
        return self.patch_embed.proj.weight.dtype

    def set_compute_dtype(self, dtype: torch.dtype) -> VisionTransformer:
        """Run the matrix multiplications in ``dtype`` (e.g. bf16); everything else stays fp32.

        Tokens, positional embeddings (and their interpolation), LayerNorms, LayerScale and the
        residual stream keep fp32, so only the matmul inputs and weights lose precision.
        """
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.to(dtype)
        return self

    def interpolate_pos_embed(self, grid_h: int, grid_w: int) -> torch.Tensor:
        """Positional embedding (1, 1 + grid_h·grid_w, D) for a grid_h × grid_w patch grid.

        The stored G×G grid is resized in fp32 with bilinear, antialiased, align_corners=False
        interpolation straight to the target size, as the published TIPS code does (not
        DINOv2's bicubic with a 0.1 offset). Results are cached per grid size.
        """
        pos = self.pos_embed
        g = self.config.pos_embed_grid
        if grid_h == g and grid_w == g:
            return pos
        # no cache while tracing/exporting: fake tensors have no data_ptr, and a graph must not
        # depend on Python-side state
        tracing = (
            torch.jit.is_tracing()
            or torch.compiler.is_compiling()
            or getattr(torch.compiler, "is_exporting", lambda: False)()
        )
        use_cache = not tracing and not (pos.requires_grad and torch.is_grad_enabled())
        key = (
            (grid_h, grid_w, pos.dtype, pos.device, pos.data_ptr(), pos._version)
            if use_cache
            else None
        )
        if use_cache and key in self._pos_cache:
            return self._pos_cache[key]
        pos32 = pos.float()
        d = pos32.shape[-1]
        grid = pos32[:, 1:].reshape(1, g, g, d).permute(0, 3, 1, 2)
        grid = F.interpolate(
            grid, size=(grid_h, grid_w), mode="bilinear", align_corners=False, antialias=True
        )
        grid = grid.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, d)
        out = torch.cat([pos32[:, :1], grid], dim=1).to(pos.dtype)
        if use_cache:
            if len(self._pos_cache) >= 8:  # stale sizes or weights: start afresh
                self._pos_cache.clear()
            self._pos_cache[key] = out
        return out

    def forward(self, images: torch.Tensor) -> VisionFeatures:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape (B, 3, H, W), got {tuple(images.shape)}")
        _, _, h, w = images.shape
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"image height and width must be multiples of {p}, got {h}×{w}")
        x = self.patch_embed(images.to(self.compute_dtype)).to(self.pos_embed.dtype)
        pos = self.interpolate_pos_embed(h // p, w // p)
        b = x.shape[0]
        x = torch.cat(
            [
                (self.cls_token + pos[:, :1]).expand(b, -1, -1),
                self.register_tokens.expand(b, -1, -1),
                x + pos[:, 1:],
            ],
            dim=1,
        )
        for block in self.blocks:
            x = block(x)
        x = self.norm(x)
        r = self.num_register_tokens
        return VisionFeatures(x[:, :1], x[:, 1:2], x[:, 1 + r :])
