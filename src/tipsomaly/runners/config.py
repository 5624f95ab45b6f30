"""The eval and train configs: :class:`DetectorConfig` plus what each verb adds.

They live apart from their runners so that the CLI reads their defaults, choices and help while
it builds its parser, without importing torch. :mod:`.evaluate` and :mod:`.train` re-export them.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidOptionError, TipsomalyError
from ..method.config import DEFAULT_MODE, MODES, PROMPTS_BACKBONE, DetectorConfig, option
from ..metrics.summary import AUPRO_KINDS
from ..validation import choice, in_range, non_empty, non_negative_int, positive_int

__all__ = [
    "CACHE_DTYPE_CHOICES",
    "EvalConfig",
    "EvalSettings",
    "TrainConfig",
    "TrainError",
    "TrainSettingsError",
]

CACHE_DTYPE_CHOICES = ("fp32", "fp16")
_SHOTS_HELP = (
    "few-shot protocol: K normal images per class, drawn (--shot-seed) from the dataset's own "
    "train split, form a reference profile the test images are also scored against "
    "(WinCLIP and AnomalyDINO report K = 1, 2, 4); 0: zero-shot"
)
_AUPRO_HELP = (
    "zsad: the convention of the paper's tables (200 thresholds, FPR<0.3 rescaled); "
    "mvtec: the official MVTec AD definition (exact curve to FPR 0.3, divided by 0.3)"
)
_OUTSIDE_ROOT_HELP = (
    "let meta.json paths leave the dataset root (../, absolute paths, symlinks out); "
    "by default such entries are refused"
)


class TrainError(TipsomalyError, ValueError):
    """The training run cannot start or continue (bad settings, nothing to resume, ...)."""


class TrainSettingsError(TrainError, InvalidOptionError):
    """A :class:`TrainConfig` value that cannot work: both a train and an option error."""


def _required(help: str) -> Any:  # noqa: A002 - the argparse word
    """A field without a default (a required option), with its help."""
    return dataclasses.field(metadata={"help": help, "choices": None, "metavar": "DIR"})


@dataclass(frozen=True, kw_only=True)
class EvalConfig(DetectorConfig):
    """What ``tipsomaly eval`` runs: the detector's settings and the metric options.

    ``pixel_prompts="auto"`` follows the paper's protocol per dataset
    (:func:`~tipsomaly.method.config.default_pixel_prompts`). ``device``/``dtype`` are names;
    the CLI passes the resolved ones so that ``results.json`` records what was used.
    ``shots`` and ``profiles``: see :mod:`tipsomaly.runners.few_shot`.
    """

    pixel_prompts: str | os.PathLike | None = option(
        "auto",
        "learned pixel prompts: a bundled name (trained-on-mvtec, trained-on-visa), a "
        f".safetensors/.pth file, 'none', or 'auto': the paper's protocol for {PROMPTS_BACKBONE} "
        "— prompts trained on VisA for MVTec AD, on MVTec AD for every other dataset; none for "
        "other backbones",
    )
    workers: int = option(1, "image-loading worker processes (0: load in the main process)")
    aupro: str = option("zsad", _AUPRO_HELP, choices=AUPRO_KINDS)
    classes: Sequence[str] | None = option(None, "only these classes (default: all)")
    offline: bool | None = None
    #: let meta.json paths leave the dataset root (refused by default)
    allow_outside_root: bool = option(False, _OUTSIDE_ROOT_HELP)
    shots: int = option(0, _SHOTS_HELP, metavar="K")
    shot_seed: int = option(
        0, "seed of the draw of the --shots reference images (each class its own draw)"
    )
    mode: str | None = option(
        None,
        "how images are scored with --shots or --profile: zero-shot (the prompts only), "
        "few-shot (distance to the references only) or fused (their mean); default: fused with "
        "either, zero-shot without",
        choices=MODES,
    )
    roi: str | os.PathLike | None = option(
        None,
        "region-of-interest mask for every image (white = inspect): maps 0 and pixels left out "
        "of the pixel metrics outside it, image scores from ROI evidence only",
        metavar="PATH",
    )
    roi_dir: str | os.PathLike | None = option(
        None,
        "a folder of per-image ROI masks: DIR/<image path relative to the dataset root, "
        "without extension>.<ext>, else DIR/<file stem>.<ext> (every test image needs one)",
        metavar="DIR",
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.roi is not None and self.roi_dir is not None:
            raise InvalidOptionError("give one of roi (one mask) and roi_dir (one per image)")
        non_negative_int(self.workers, "workers")
        choice(self.aupro, "aupro", AUPRO_KINDS)
        non_negative_int(self.shots, "shots")
        if non_negative_int(self.shot_seed, "shot_seed") >= 2**64:
            raise InvalidOptionError(f"shot_seed must be < 2**64, got {self.shot_seed}")
        if self.mode is not None:
            choice(self.mode, "mode", MODES)
            if self.mode != "zero-shot" and not self.shots and not self.profiles:
                raise InvalidOptionError(
                    f"mode {self.mode} needs reference images: give shots K >= 1 (--shots K) "
                    "or profiles (--profile)"
                )
        if self.shots and self.profiles:
            raise InvalidOptionError(
                "give shots (references drawn from the train split) or profiles, not both"
            )

    @property
    def scoring_mode(self) -> str:
        """``mode`` made concrete: as given, else ``fused`` with shots or profiles,
        ``zero-shot`` without."""
        if self.mode is not None:
            return self.mode
        return DEFAULT_MODE if self.shots or self.profiles else "zero-shot"

    def record(self) -> dict[str, Any]:
        """The settings as ``results.json`` records them (files by path, ``mode`` the one
        used)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["profiles"] = [str(getattr(p, "path", p)) for p in self.profiles]
        out["pixel_prompts"] = None if self.pixel_prompts is None else str(self.pixel_prompts)
        out["mode"] = self.scoring_mode
        return out


#: the former name of :class:`EvalConfig`
EvalSettings = EvalConfig


@dataclass(frozen=True, kw_only=True)
class TrainConfig(DetectorConfig):
    """Settings of a training run; the defaults are the paper's.

    ``data`` is a dataset root with ``meta.json`` (its ``test`` split is trained on, as the paper
    trains on MVTec AD's test set); ``model`` a preset name, a model directory or a loaded
    :class:`~tipsomaly.tips.TipsModel`. ``batch_size`` is the images per step. ``feature_cache``
    is ``"memory"``, ``"none"`` (backbone every step) or a directory; ``cache_dtype`` ``"fp32"``
    or ``"fp16"``. ``eval_data`` is an optional dataset root evaluated (pixel AUROC and AUPRO,
    mean over classes) after each epoch, its maps smoothed by ``sigma``. ``pixel_prompts`` must
    stay ``None`` (training learns them) and ``cls`` is not used.
    """

    data: str | os.PathLike = _required("dataset root with meta.json")
    out: str | os.PathLike = _required("output directory")
    pixel_prompts: None = option(None, "not used: training learns the pixel prompts")
    epochs: int = option(2, "passes over the data")
    lr: float = option(1e-3, "Adam learning rate (> 0)")
    betas: tuple[float, float] = option(
        (0.5, 0.999), "Adam's betas, each in [0, 1)", metavar=("B1", "B2")
    )
    n_prompt: int = option(8, "learned vectors per state")
    init_std: float = 0.02
    seed: int = option(111, "initialisation and shuffling")
    classes: Sequence[str] | None = option(None, "train on these classes only (default: all)")
    feature_cache: str | os.PathLike = option(
        "memory",
        "where the frozen patch features live: in memory (default), in a directory (reused by "
        "later runs on the same images and model), or none (backbone every step)",
        metavar="DIR|memory|none",
    )
    cache_dtype: str = option(
        "fp32",
        "precision of the cached features (fp16: half the memory)",
        choices=CACHE_DTYPE_CHOICES,
    )
    resume: bool = option(
        False, "continue after the last complete epoch in --out (same settings; --epochs may grow)"
    )
    eval_data: str | os.PathLike | None = option(
        None, "dataset root evaluated after each epoch (pixel metrics)", metavar="DIR"
    )
    aupro: str = option("zsad", "AUPRO definition of --eval-data", choices=AUPRO_KINDS)
    offline: bool | None = None
    progress: bool = True
    allow_outside_root: bool = option(False, _OUTSIDE_ROOT_HELP)

    def __post_init__(self) -> None:
        try:
            self._check()
        except InvalidOptionError as exc:
            raise TrainSettingsError(str(exc)) from None

    def _check(self) -> None:
        super().__post_init__()
        if self.pixel_prompts is not None:
            raise InvalidOptionError(
                f"pixel_prompts must be None for training (it learns them), got "
                f"{self.pixel_prompts!r}"
            )
        positive_int(self.epochs, "epochs")
        in_range(self.lr, "lr", 0, low_open=True)
        if len(self.betas) != 2:
            raise InvalidOptionError(f"betas must be two values in [0, 1), got {self.betas}")
        for beta in self.betas:
            in_range(beta, "betas", 0, 1, high_open=True)
        positive_int(self.n_prompt, "n_prompt")
        in_range(self.init_std, "init_std", 0)
        if non_negative_int(self.seed, "seed") >= 2**64:
            raise InvalidOptionError(f"seed must be < 2**64, got {self.seed}")
        if isinstance(self.feature_cache, str):
            non_empty(self.feature_cache, "feature_cache")
        choice(self.cache_dtype, "cache_dtype", CACHE_DTYPE_CHOICES)
        choice(self.aupro, "aupro", AUPRO_KINDS)

    @property
    def eval_sigma(self) -> float:
        """The former name of ``sigma`` here: the smoothing of the ``eval_data`` maps."""
        return self.sigma
