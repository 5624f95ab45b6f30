"""Shape descriptions of the two TIPS towers, readable from ``model.json`` / ``golden.json``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from ..errors import TipsomalyError


class ConfigError(TipsomalyError, ValueError):
    """A model description is malformed."""


def _known_fields(cls: type, data: dict[str, Any], where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    # Descriptive extras (e.g. "pos_interpolation") are allowed and ignored.
    return {k: v for k, v in data.items() if k in names}


@dataclass(frozen=True)
class VisionConfig:
    """The DINOv2-style vision tower of TIPS.

    ``mlp_ratio`` may be fractional (So400m: 4304/1152); the FFN hidden width is
    ``int(embed_dim * mlp_ratio)`` for ``ffn="mlp"``, and for ``ffn="swiglu"`` the
    SwiGLU rule ``(int(hidden * 2/3) + 7) // 8 * 8`` applied to that width.
    """

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int = 14
    mlp_ratio: float = 4.0
    ffn: str = "mlp"
    num_register_tokens: int = 1
    layer_scale: bool = True
    pos_embed_image_size: int = 448
    npz: str = "vision.npz"

    def __post_init__(self) -> None:
        ffn = "".join(ch for ch in str(self.ffn).lower() if ch.isalnum())
        if ffn.startswith("swiglu"):
            ffn = "swiglu"
        if ffn not in ("mlp", "swiglu"):
            raise ConfigError(f"vision.ffn must be 'mlp' or 'swiglu', got {self.ffn!r}")
        object.__setattr__(self, "ffn", ffn)
        if self.embed_dim % self.num_heads:
            raise ConfigError(
                f"vision.embed_dim ({self.embed_dim}) must be divisible by num_heads "
                f"({self.num_heads})"
            )
        if self.pos_embed_image_size % self.patch_size:
            raise ConfigError(
                f"vision.pos_embed_image_size ({self.pos_embed_image_size}) must be a multiple "
                f"of patch_size ({self.patch_size})"
            )
        if self.num_register_tokens < 1:
            raise ConfigError("vision.num_register_tokens must be >= 1 (TIPS's 2nd CLS token)")

    @property
    def pos_embed_grid(self) -> int:
        """Side of the square patch grid the positional embedding is stored for."""
        return self.pos_embed_image_size // self.patch_size

    @property
    def mlp_hidden_dim(self) -> int:
        hidden = int(self.embed_dim * self.mlp_ratio)
        if self.ffn == "swiglu":
            hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
        return hidden

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "vision") -> VisionConfig:
        try:
            return cls(**_known_fields(cls, data, where))
        except TypeError as exc:  # a required key is missing
            raise ConfigError(f"{where}: {exc}") from None


@dataclass(frozen=True)
class TextConfig:
    """The text tower of TIPS (a pre-LN transformer with mean pooling)."""

    hidden_size: int
    mlp_dim: int
    num_heads: int
    num_layers: int
    vocab_size: int = 32000
    max_len: int = 64
    npz: str = "text.npz"
    tokenizer: str = "tokenizer.model"
    temperature_key: str = "temperature"

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"text.hidden_size ({self.hidden_size}) must be divisible by num_heads "
                f"({self.num_heads})"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "text") -> TextConfig:
        try:
            return cls(**_known_fields(cls, data, where))
        except TypeError as exc:
            raise ConfigError(f"{where}: {exc}") from None
