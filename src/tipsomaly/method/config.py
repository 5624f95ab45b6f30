"""The detector's settings in one place: defaults, choices, help text and checks.

:class:`DetectorConfig` is what every verb that runs the network shares (``predict``, ``eval``,
``train``); the eval and train configs (:mod:`tipsomaly.runners.config`) derive from it and the
CLI reads each option's default, choices and help from :func:`dataclasses.fields`, so a default
is written once. The paper's choice of learned pixel prompts per backbone and dataset lives in
:func:`default_pixel_prompts`. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any, TypeVar

from ..validation import choice, in_range, non_empty, positive_int
from .names import BUILTIN_PROMPT_TYPES, BUNDLED_PIXEL_PROMPTS

__all__ = [
    "AUTO",
    "DEFAULT_FALSE_ALARM_RATE",
    "DEFAULT_MAX_BANK",
    "DEFAULT_MODE",
    "DEFAULT_PIXEL_FALSE_ALARM_RATE",
    "MODES",
    "CLS_CHOICES",
    "DTYPE_CHOICES",
    "PROMPTS_BACKBONE",
    "DetectorConfig",
    "default_pixel_prompts",
    "option",
    "resolve_pixel_prompts",
]

AUTO = "auto"
CLS_CHOICES = ("cls1", "cls2")
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
#: the backbone the bundled pixel prompts were trained for (the paper's, TIPS L/14 high-res)
PROMPTS_BACKBONE = "l14h"

# few-shot profiles (``tipsomaly fit``, :mod:`tipsomaly.method.profile`)
#: how an image is scored when normal references are known
MODES = ("zero-shot", "few-shot", "fused")
#: the mode a profile is used in unless told otherwise
DEFAULT_MODE = "fused"
DEFAULT_FALSE_ALARM_RATE = 0.01
DEFAULT_PIXEL_FALSE_ALARM_RATE = 0.001
#: patch-bank entries kept before the coreset starts: 7 references at 518 px (1,369 patches
#: each) fit; with more, the search of one 518-px image against the bank stays under 10 % of a
#: B/14 forward (benchmarks/fewshot.py; the full 16-shot bank of 21,904 costs ~17 %)
DEFAULT_MAX_BANK = 10240

C = TypeVar("C", bound="DetectorConfig")


def option(
    default: Any,
    help: str,  # noqa: A002 - the argparse word
    *,
    choices: tuple[str, ...] | None = None,
    metavar: str | tuple[str, ...] | None = None,
) -> Any:
    """A dataclass field whose metadata carries the option's help, choices and metavar."""
    return dataclasses.field(
        default=default, metadata={"help": help, "choices": choices, "metavar": metavar}
    )


@dataclass(frozen=True, kw_only=True)
class DetectorConfig:
    """How the detector runs; the defaults are the paper's (518 px, sigma 4, ``cls1``).

    ``pixel_prompts`` is a bundled name, a file, ``None``/``"none"`` (the fixed prompts score
    the patches too) or ``"auto"``: :func:`default_pixel_prompts` for the model (and, in
    ``eval``, the dataset). ``dtype`` and ``device`` are names (``auto`` resolves on the machine
    that runs). The image size must also be a multiple of the model's patch size, checked where
    the model is known.

    Raises:
        InvalidOptionError: a value that cannot work (the message names the field).
    """

    model: str | os.PathLike = option(
        "l14h",
        "TIPS preset (see `tipsomaly weights list`; downloaded on first use) or a model "
        "directory; l14h is the paper's backbone",
    )
    pixel_prompts: str | os.PathLike | None = option(
        AUTO,
        f"learned pixel prompts: {' or '.join(BUNDLED_PIXEL_PROMPTS)} (bundled, for "
        f"{PROMPTS_BACKBONE}), a .safetensors/.pth file, 'none' (the fixed prompts then score "
        f"the patches too), or 'auto': trained-on-mvtec for {PROMPTS_BACKBONE}, none for other "
        "backbones",
    )
    prompt_type: str = option(
        "industrial",
        f"fixed prompt ensemble: {', '.join(BUILTIN_PROMPT_TYPES)} or a name in --prompt-file",
    )
    prompt_file: str | os.PathLike | None = option(
        None, "JSON file of prompt ensembles (schema of the built-in)"
    )
    image_size: int = option(
        518,
        "side of the square model input, a multiple of the patch size 14",
    )
    sigma: float = option(4.0, "Gaussian smoothing of the maps, in model-input pixels")
    cls: str = option(
        "cls1",
        "CLS token giving image_score: cls1 (alt-text) or cls2 (dense captions); both scores "
        "are always reported",
        choices=CLS_CHOICES,
    )
    device: str = option(AUTO, "auto (cuda if available, else cpu), cpu, cuda, cuda:1…")
    dtype: str = option(
        "fp32",
        "matmul precision of the vision tower: fp32, bf16 (CPUs with AMX/AVX-512-BF16, recent "
        "GPUs), fp16 (GPUs); auto = the fastest this machine runs accurately",
        choices=DTYPE_CHOICES,
    )
    batch_size: int = option(8, "images per forward pass")

    def __post_init__(self) -> None:
        if isinstance(self.pixel_prompts, str) and self.pixel_prompts.lower() == "none":
            object.__setattr__(self, "pixel_prompts", None)  # one spelling of "no prompts"
        if isinstance(self.model, str):
            non_empty(self.model, "model")
        positive_int(self.image_size, "image_size")
        non_empty(self.prompt_type, "prompt_type")
        in_range(self.sigma, "sigma", 0)
        choice(self.cls, "cls", CLS_CHOICES)
        choice(self.dtype, "dtype", DTYPE_CHOICES)
        if isinstance(self.device, str):
            non_empty(self.device, "device")
        positive_int(self.batch_size, "batch_size")

    def for_dataset(self: C, dataset: str | None = None) -> C:
        """This config with ``pixel_prompts="auto"`` made concrete: the protocol's choice for
        the model (and ``dataset``, see :func:`default_pixel_prompts`)."""
        chosen = resolve_pixel_prompts(self.pixel_prompts, self.model, dataset)
        if chosen == self.pixel_prompts:
            return self
        return dataclasses.replace(self, pixel_prompts=chosen)


def _is_prompts_backbone(model: object) -> bool:
    from ..tips.presets import get_preset, is_preset

    if not isinstance(model, str) or not is_preset(model):
        return False
    return get_preset(model).short_name == PROMPTS_BACKBONE


def default_pixel_prompts(model: object, dataset: str | None = None) -> str | None:
    """The paper's learned pixel prompts for ``model`` evaluated on ``dataset``.

    For its backbone (``l14h`` under any of its names): the prompts trained on VisA for MVTec AD
    (a dataset whose name starts with ``mvtec``, ignoring case and punctuation), those trained
    on MVTec AD for every other dataset and for images of unknown origin (``dataset=None``, as
    in ``predict``). ``None`` for other backbones: no released prompts fit them.
    """
    if not _is_prompts_backbone(model):
        return None
    key = "".join(c for c in (dataset or "").lower() if c.isalnum())
    name = "trained-on-visa" if key.startswith("mvtec") else "trained-on-mvtec"
    assert name in BUNDLED_PIXEL_PROMPTS
    return name


def resolve_pixel_prompts(
    value: str | os.PathLike | None, model: object, dataset: str | None = None
) -> str | os.PathLike | None:
    """``--pixel-prompts`` made concrete: ``None``/``none`` → None, ``auto`` →
    :func:`default_pixel_prompts`, anything else as given."""
    if value is None:
        return None
    if isinstance(value, str):
        if value.lower() == "none":
            return None
        if value == AUTO:
            return default_pixel_prompts(model, dataset)
    return value
