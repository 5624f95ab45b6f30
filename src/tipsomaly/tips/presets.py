"""The registry of published TIPS checkpoints: names, files, URLs, shapes and sizes."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import UnknownModelError
from .config import ConfigError, TextConfig, VisionConfig, read_model_json

MODEL_FILE = "model.json"

GCS_ROOT = "https://storage.googleapis.com/tips_data"
TOKENIZER_URL = f"{GCS_ROOT}/v1_0/checkpoints/tokenizer.model"
TOKENIZER_FILE = "tokenizer.model"


@dataclass(frozen=True)
class Preset:
    """One published checkpoint.

    ``image_size`` is the resolution the checkpoint was trained at (its positional embedding
    grid is ``image_size / 14``); the towers accept any multiple of 14. Parameter counts are in
    millions and count every array of the checkpoint (including ``pos_embed`` and the unused
    ``mask_token``; the TIPS paper's rounded figures leave part of that out).
    ``temperature`` is the known logit divisor, used where the file lacks it.
    """

    name: str
    short_name: str
    version: str
    checkpoint: str
    vision: VisionConfig
    text: TextConfig
    image_size: int
    params_vision_m: float
    params_text_m: float
    temperature: float | None = None
    hub_repo: str | None = None
    description: str = ""

    @property
    def vision_file(self) -> str:
        return f"{self.checkpoint}_vision.npz"

    @property
    def text_file(self) -> str:
        return f"{self.checkpoint}_text.npz"

    @property
    def vision_url(self) -> str:
        return f"{GCS_ROOT}/{self.version}_0/checkpoints/pytorch/{self.vision_file}"

    @property
    def text_url(self) -> str:
        return f"{GCS_ROOT}/{self.version}_0/checkpoints/pytorch/{self.text_file}"

    @property
    def tokenizer_url(self) -> str:
        return TOKENIZER_URL

    @property
    def grid_size(self) -> int:
        return self.vision.pos_embed_grid

    @property
    def embed_dim(self) -> int:
        return self.vision.embed_dim

    @property
    def download_mb(self) -> float:
        """Approximate size of the two fp32 ``.npz`` files, in MB (10^6 bytes)."""
        return (self.params_vision_m + self.params_text_m) * 4


# (D, depth, heads, ffn, mlp ratio) of the vision towers, and (layers, MLP width) of the text
# towers; the text tower has the vision tower's width and head count.
_SIZES = {
    "s14": (384, 12, 6, "mlp", 4.0, 12, 1536),
    "b14": (768, 12, 12, "mlp", 4.0, 12, 3072),
    "l14": (1024, 24, 16, "mlp", 4.0, 12, 4096),
    "so400m14": (1152, 27, 16, "mlp", 4304 / 1152, 27, 4304),
    "g14": (1536, 40, 24, "swiglu", 4.0, 12, 6144),
}


def _configs(size: str, image_size: int) -> tuple[VisionConfig, TextConfig]:
    d, depth, heads, ffn, ratio, text_layers, text_mlp = _SIZES[size]
    vision = VisionConfig(
        embed_dim=d,
        depth=depth,
        num_heads=heads,
        patch_size=14,
        mlp_ratio=ratio,
        ffn=ffn,
        num_register_tokens=1,
        layer_scale=True,
        pos_embed_image_size=image_size,
    )
    text = TextConfig(
        hidden_size=d, mlp_dim=text_mlp, num_heads=heads, num_layers=text_layers, vocab_size=32000
    )
    return vision, text


def _preset(
    name: str,
    short: str,
    version: str,
    checkpoint: str,
    size: str,
    params: tuple[float, float],
    temperature: float | None,
    image_size: int = 448,
    hub_repo: str | None = None,
    description: str = "",
) -> Preset:
    vision, text = _configs(size, image_size)
    return Preset(
        name=name,
        short_name=short,
        version=version,
        checkpoint=checkpoint,
        vision=vision,
        text=text,
        image_size=image_size,
        params_vision_m=params[0],
        params_text_m=params[1],
        temperature=temperature,
        hub_repo=hub_repo,
        description=description,
    )


# fmt: off
PRESETS: dict[str, Preset] = {p.name: p for p in [
    # name, short name, version, checkpoint, size, (vision, text) parameters (M), temperature
    _preset("tips-v1-s14-highres", "s14h", "v1", "tips_oss_s14_highres_distilled", "s14",
            (21.92, 33.58), 0.0054977, description="TIPS v1 S/14, 448 px, distilled"),
    _preset("tips-v1-b14-highres", "b14h", "v1", "tips_oss_b14_highres_distilled", "b14",
            (86.32, 109.63), 0.0039754, description="TIPS v1 B/14, 448 px, distilled"),
    _preset("tips-v1-l14-highres", "l14h", "v1", "tips_oss_l14_highres_distilled", "l14",
            (304.02, 183.92), 0.0042056,
            description="TIPS v1 L/14, 448 px, distilled (the TipsOmaly paper's backbone)"),
    _preset("tips-v1-so400m14-highres", "so400m14h", "v1",
            "tips_oss_so400m14_highres_largetext_distilled", "so400m14", (413.39, 448.33),
            0.0026997, description="TIPS v1 So400m/14, 448 px, large text tower, distilled"),
    _preset("tips-v1-g14-highres", "g14h", "v1", "tips_oss_g14_highres", "g14",
            (1135.95, 389.13), 0.0035175, description="TIPS v1 g/14, 448 px"),
    _preset("tips-v1-g14-lowres", "g14l", "v1", "tips_oss_g14_lowres", "g14",
            (1134.77, 389.13), 0.0038066, image_size=224, description="TIPS v1 g/14, 224 px"),
    _preset("tips-v2-b14", "v2-b14", "v2", "tips_v2_oss_b14", "b14", (86.32, 109.63), None,
            hub_repo="google/tipsv2-b14", description="TIPSv2 B/14, 448 px"),
    _preset("tips-v2-l14", "v2-l14", "v2", "tips_v2_oss_l14", "l14", (304.02, 183.92),
            0.0047851, hub_repo="google/tipsv2-l14", description="TIPSv2 L/14, 448 px"),
    _preset("tips-v2-so400m14", "v2-so400m14", "v2", "tips_v2_oss_so14", "so400m14",
            (413.39, 448.33), 0.0046380, hub_repo="google/tipsv2-so400m14",
            description="TIPSv2 So400m/14, 448 px"),
    _preset("tips-v2-g14", "v2-g14", "v2", "tips_v2_oss_g14", "g14", (1135.95, 389.13),
            0.0036227, hub_repo="google/tipsv2-g14", description="TIPSv2 g/14, 448 px"),
]}
# fmt: on

DEFAULT_PRESET = "tips-v1-l14-highres"


def _lookup_table() -> dict[str, str]:
    table: dict[str, str] = {}
    for p in PRESETS.values():
        for alias in (p.name, p.short_name, p.checkpoint):
            table[alias.lower()] = p.name
        if p.hub_repo:
            table[p.hub_repo.lower()] = p.name
            table[p.hub_repo.split("/")[1].lower()] = p.name
    return table


_ALIASES = _lookup_table()


def is_preset(name: str) -> bool:
    """True when ``name`` is a preset name, short name, checkpoint name or hub repo."""
    return name.lower() in _ALIASES


def get_preset(name: str) -> Preset:
    """The preset called ``name`` (case-insensitive; any of its names).

    Raises :class:`~tipsomaly.errors.UnknownModelError` (a ``KeyError``) listing the known ones.
    """
    try:
        return PRESETS[_ALIASES[name.lower()]]
    except KeyError:
        known = ", ".join(f"{p.short_name} ({p.name})" for p in PRESETS.values())
        raise UnknownModelError(
            f"unknown TIPS preset {name!r}; known presets: {known} "
            f"(or give a model directory holding {MODEL_FILE})"
        ) from None


def model_configs(model: str | os.PathLike) -> tuple[VisionConfig, TextConfig]:
    """The tower descriptions of ``model`` (a preset name or a model directory), without
    loading any weights: what the CLI checks options against before a model loads.

    A directory's ``model.json`` is validated against its schema (:class:`ConfigError`); a
    name that is neither raises :class:`~tipsomaly.errors.UnknownModelError`.
    """
    path = Path(model)
    if path.is_dir():
        vision, text, _ = read_model_json(path / MODEL_FILE)
        return vision, text
    preset = named_preset(model)
    return preset.vision, preset.text


def named_preset(model: str | os.PathLike) -> Preset:
    """The preset ``model`` names (not a model directory: the caller tried that first).

    Raises :class:`ConfigError` for a path (a file, or a name with a separator), else
    :class:`~tipsomaly.errors.UnknownModelError` listing the presets.
    """
    name = str(model)
    is_path = Path(model).exists() or any(s and s in name for s in (os.sep, os.altsep))
    if not is_preset(name) and is_path:
        raise ConfigError(f"{model} is not a model directory (a folder holding {MODEL_FILE})")
    return get_preset(name)
