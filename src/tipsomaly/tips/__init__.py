"""The TIPS backbone: towers, tokenizer, named checkpoints; nothing about anomalies.

Names are imported on first use, so ``tipsomaly.tips.presets`` (and the CLI's ``--help``)
do not pay for importing PyTorch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ConfigError": "config",
    "TextConfig": "config",
    "VisionConfig": "config",
    "TipsModel": "model",
    "build_model": "model",
    "load_model": "model",
    "load_model_dir": "model",
    "DEFAULT_PRESET": "presets",
    "PRESETS": "presets",
    "Preset": "presets",
    "get_preset": "presets",
    "VisionFeatures": "vision",
    "ChecksumError": "weights",
    "WeightsUnavailableError": "weights",
    "cache_dir": "weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
