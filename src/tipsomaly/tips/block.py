"""One pre-LayerNorm transformer block of the vision tower, with LayerScale."""

from __future__ import annotations

import torch
from torch import nn

from .attention import Attention
from .ffn import Mlp, SwiGLU


class LayerScale(nn.Module):
    """Per-channel residual scaling (``gamma``)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Block(nn.Module):
    """``x += ls1(attn(norm1(x)))``; ``x += ls2(mlp(norm2(x)))``."""

    def __init__(
        self, dim: int, num_heads: int, mlp_hidden: int, ffn: str = "mlp", layer_scale: bool = True
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.ls1 = LayerScale(dim) if layer_scale else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = SwiGLU(dim, mlp_hidden) if ffn == "swiglu" else Mlp(dim, mlp_hidden)
        self.ls2 = LayerScale(dim) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The residual stream, norms and LayerScale stay in x's dtype (fp32); attention and the
        # FFN run in their weights' dtype (bf16/fp16 when a lower matmul precision is chosen).
        dt = self.attn.qkv.weight.dtype
        x = x + self.ls1(self.attn(self.norm1(x).to(dt)).to(x.dtype))
        return x + self.ls2(self.mlp(self.norm2(x).to(dt)).to(x.dtype))
