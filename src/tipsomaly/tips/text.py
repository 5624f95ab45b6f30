"""The TIPS text tower: token and sinusoidal embeddings, masked pre-LN blocks, mean pooling."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig


def sinusoidal_positions(length: int, dim: int, max_wavelength: float = 10_000.0) -> torch.Tensor:
    """(length, dim) fp32: ``concat(sin(p·inv), cos(p·inv))`` in two halves, not interleaved.

    ``inv_i = exp(-i · ln(max_wavelength) / (n - 1))`` with ``n = dim // 2``.
    """
    n = dim // 2
    log_increment = math.log(max_wavelength) / max(n - 1, 1)
    inv = torch.exp(torch.arange(n, dtype=torch.float32) * -log_increment)
    angles = torch.arange(length, dtype=torch.float32)[:, None] * inv[None, :]
    pe = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    return F.pad(pe, (0, dim % 2))


class TextAttention(nn.Module):
    """Packed ``in_proj`` (q, k, v) multi-head attention; padded keys are masked out."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """x: (B, L, D); valid: (B, L) bool, True for real tokens."""
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=valid[:, None, None, :])
        return self.out_proj(x.transpose(1, 2).reshape(b, n, d))


class TextMlp(nn.Module):
    """``c_fc`` → ReLU → ×mask → ``c_proj`` → ×mask."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.c_fc = nn.Linear(dim, hidden)
        self.c_proj = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.c_proj(F.relu(self.c_fc(x)) * mask) * mask


class TextBlock(nn.Module):
    """``x += attn(ln_1(x))``; ``x += mlp(ln_2(x))`` (LayerNorm eps 1e-5)."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = TextAttention(dim, num_heads)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = TextMlp(dim, mlp_dim)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), valid)
        return x + self.mlp(self.ln_2(x), mask)


class _Resblocks(nn.Module):
    """Holds the blocks under the official key names (``transformer.resblocks.N``)."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.resblocks = nn.ModuleList(
            TextBlock(config.hidden_size, config.num_heads, config.mlp_dim)
            for _ in range(config.num_layers)
        )


class TextTransformer(nn.Module):
    """Token ids and paddings (B, L) → text embeddings (B, D), not L2-normalised.

    ``paddings`` is 1 where a position is padding. ``prefix`` optionally holds learned input
    embeddings, (n, D) or (B, n, D), prepended to the scaled token embeddings; the sequence is
    then cut back to ``max_len`` and the prefix positions count as valid tokens.
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.transformer = _Resblocks(config)
        self.ln_final = nn.LayerNorm(config.hidden_size, eps=1e-5)
        self._positions: dict[tuple, torch.Tensor] = {}

    @property
    def dtype(self) -> torch.dtype:
        return self.token_embedding.weight.dtype

    def positions(self, length: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """(length, D) sinusoidal position embeddings, computed in fp32 and cached."""
        if length > self.config.max_len:
            raise ValueError(f"sequence of {length} tokens exceeds max_len {self.config.max_len}")
        key = (length, device, dtype)
        if key not in self._positions:
            pe = sinusoidal_positions(length, self.config.hidden_size)
            self._positions[key] = pe.to(device=device, dtype=dtype)
        return self._positions[key]

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """(B, L) ids → (B, L, D) token embeddings scaled by sqrt(D), before positions."""
        return self.token_embedding(ids) * (self.config.hidden_size**0.5)

    def forward(
        self, ids: torch.Tensor, paddings: torch.Tensor, prefix: torch.Tensor | None = None
    ) -> torch.Tensor:
        x = self.embed_tokens(ids)
        paddings = paddings.to(torch.bool)
        if prefix is not None:
            if prefix.ndim == 2:
                prefix = prefix.unsqueeze(0)
            prefix = prefix.to(x.dtype).expand(x.shape[0], -1, -1)
            n = prefix.shape[1]
            x = torch.cat([prefix, x], dim=1)[:, : self.config.max_len]
            paddings = F.pad(paddings, (n, 0), value=False)[:, : self.config.max_len]
        valid = ~paddings
        if not bool(valid.any(dim=1).all()):
            raise ValueError("a text has no tokens (all padding): empty prompts are not allowed")
        # Trailing columns that are padding in every row change nothing (padded keys are masked,
        # pooling skips them, positions are absolute): drop them to save work.
        length = int(valid.any(dim=0).nonzero().max()) + 1
        x, valid = x[:, :length], valid[:, :length]
        x = x + self.positions(x.shape[1], x.device, x.dtype)
        mask = valid.unsqueeze(-1).to(x.dtype)
        for block in self.transformer.resblocks:
            x = block(x, valid, mask)
        x = self.ln_final(x)
        return (x * mask).sum(dim=1) / (mask.sum(dim=1) + 1e-8)
