"""The TIPS backbone: towers, tokenizer, named checkpoints; nothing about anomalies."""

from .config import ConfigError, TextConfig, VisionConfig
from .model import TipsModel, build_model, load_model, load_model_dir
from .presets import DEFAULT_PRESET, PRESETS, Preset, get_preset
from .vision import VisionFeatures
from .weights import ChecksumError, WeightsUnavailableError, cache_dir

__all__ = [
    "DEFAULT_PRESET",
    "PRESETS",
    "ChecksumError",
    "ConfigError",
    "Preset",
    "TextConfig",
    "TipsModel",
    "VisionConfig",
    "VisionFeatures",
    "WeightsUnavailableError",
    "build_model",
    "cache_dir",
    "get_preset",
    "load_model",
    "load_model_dir",
]
