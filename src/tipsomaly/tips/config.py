"""Shape descriptions of the two TIPS towers, readable from ``model.json`` / ``golden.json``.

Both are checked against a schema (:data:`VISION_SCHEMA`, :data:`TEXT_SCHEMA`): every key known,
every value of the right type (``"12"`` is not a depth), sizes positive, widths divisible by the
head count; a mistake raises :class:`ConfigError` naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError, TipsomalyError
from ..validation import finite_float, non_empty, positive_int


class ConfigError(TipsomalyError, ValueError):
    """A model description is malformed."""


def _boolean(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise InvalidOptionError(f"{name} must be true or false, got {value!r}")
    return value


def _positive_float(value: Any, name: str) -> float:
    number = finite_float(value, name)
    if number <= 0:
        raise InvalidOptionError(f"{name} must be > 0, got {value!r}")
    return number


# field -> check(value, name); a check raises InvalidOptionError.
Check = Callable[[Any, str], Any]
VISION_SCHEMA: dict[str, Check] = {
    "embed_dim": positive_int,
    "depth": positive_int,
    "num_heads": positive_int,
    "patch_size": positive_int,
    "mlp_ratio": _positive_float,
    "ffn": non_empty,
    "num_register_tokens": positive_int,  # TIPS's second CLS token is register 0
    "layer_scale": _boolean,
    "pos_embed_image_size": positive_int,
    "npz": non_empty,
}
TEXT_SCHEMA: dict[str, Check] = {
    "hidden_size": positive_int,
    "mlp_dim": positive_int,
    "num_heads": positive_int,
    "num_layers": positive_int,
    "vocab_size": positive_int,
    "max_len": positive_int,
    "npz": non_empty,
    "tokenizer": non_empty,
    "temperature_key": non_empty,
}
# Free-text keys a description may carry besides the schema's (golden.json documents itself).
DESCRIPTIVE_KEYS = frozenset({"pos_interpolation", "description", "comment", "what"})


def _validate(schema: dict[str, Check], values: dict[str, Any], where: str) -> None:
    for key, value in values.items():
        if key in schema:
            try:
                schema[key](value, f"{where}.{key}")
            except InvalidOptionError as exc:
                raise ConfigError(str(exc)) from None


def _in_file(where: str, exc: Exception) -> str:
    """``FILE: message`` when ``where`` names a file (``FILE: vision``), else the message."""
    return f"{where.rsplit(': ', 1)[0]}: {exc}" if ": " in where else str(exc)


def _known_fields(
    cls: type, schema: dict[str, Check], data: dict[str, Any], where: str
) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected an object, got {type(data).__name__}")
    unknown = sorted(k for k in data if k not in schema and k not in DESCRIPTIVE_KEYS)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; known keys: "
            + ", ".join(schema)
        )
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING]
    missing = [k for k in required if k not in data]
    if missing:
        raise ConfigError(f"{where}: missing key(s) {', '.join(map(repr, missing))}")
    fields = {k: v for k, v in data.items() if k in schema}
    _validate(schema, fields, where)
    return fields


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
        _validate(VISION_SCHEMA, dataclasses.asdict(self), "vision")
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
        if int(self.embed_dim * self.mlp_ratio) < 1:
            raise ConfigError(f"vision.mlp_ratio ({self.mlp_ratio}) leaves no FFN hidden units")

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
        """Build from a ``model.json`` object, checked against :data:`VISION_SCHEMA`."""
        fields = _known_fields(cls, VISION_SCHEMA, data, where)
        try:
            return cls(**fields)
        except ConfigError as exc:  # cross-field rules: name the file too
            raise ConfigError(_in_file(where, exc)) from None


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
        _validate(TEXT_SCHEMA, dataclasses.asdict(self), "text")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"text.hidden_size ({self.hidden_size}) must be divisible by num_heads "
                f"({self.num_heads})"
            )

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "text") -> TextConfig:
        """Build from a ``model.json`` object, checked against :data:`TEXT_SCHEMA`."""
        fields = _known_fields(cls, TEXT_SCHEMA, data, where)
        try:
            return cls(**fields)
        except ConfigError as exc:
            raise ConfigError(_in_file(where, exc)) from None


def read_model_json(path: str | os.PathLike) -> tuple[VisionConfig, TextConfig, dict[str, Any]]:
    """Parse and validate a ``model.json`` (or ``golden.json``) without loading any weights.

    Returns the two tower descriptions and the whole JSON object (other top-level keys, such
    as ``temperature``, are the caller's). Raises :class:`ConfigError` naming the file and the
    field: unreadable or invalid JSON, a missing ``vision``/``text`` object, an unknown key, a
    value of the wrong type or size, widths not divisible by the head count, towers of
    different widths, a ``temperature`` that is not a positive finite number.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"model description not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    except ValueError as exc:
        raise ConfigError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or "vision" not in data or "text" not in data:
        raise ConfigError(f"{path} must hold a 'vision' and a 'text' object")
    vision = VisionConfig.from_dict(data["vision"], f"{path}: vision")
    text = TextConfig.from_dict(data["text"], f"{path}: text")
    if vision.embed_dim != text.hidden_size:
        raise ConfigError(
            f"{path}: vision.embed_dim ({vision.embed_dim}) and text.hidden_size "
            f"({text.hidden_size}) must be equal: TIPS has no projection heads"
        )
    if "temperature" in data:
        try:
            _positive_float(data["temperature"], f"{path}: temperature")
        except InvalidOptionError as exc:
            raise ConfigError(str(exc)) from None
    return vision, text, data
