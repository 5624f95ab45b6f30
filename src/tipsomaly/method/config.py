"""Every setting of a detector in one frozen record: defaults, choices, help text and checks.

:class:`DetectorConfig` is what every verb that scores images shares (``predict``, ``fit``,
``serve``, ``export``, ``eval``, ``train``). :class:`~tipsomaly.method.detector.Detector` is
built from one (:meth:`Detector.from_config`), the CLI reads each option's default, choices
and help from :func:`dataclasses.fields`, and the eval and train configs derive from it, so a
default is written once. :meth:`DetectorConfig.from_profile` takes a profile's settings (its
tiling and ROI included); :meth:`DetectorConfig.from_record` any recorded settings (an
export's).

The paper's choice of learned pixel prompts per backbone and dataset lives in
:func:`default_pixel_prompts`. Nothing here imports torch.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from ..errors import InvalidOptionError, SetupMismatchError
from ..identity import diff
from ..validation import choice, in_range, non_empty, positive_int, tile_side
from .names import (
    BUILTIN_PROMPT_TYPES,
    BUNDLED_PIXEL_PROMPTS,
    DEFAULT_FALSE_ALARM_RATE,
    DEFAULT_MAX_BANK,
    DEFAULT_MODE,
    DEFAULT_PIXEL_FALSE_ALARM_RATE,
    MODES,
)

__all__ = [
    "AUTO",
    "CLS_CHOICES",
    "DEFAULT_FALSE_ALARM_RATE",
    "DEFAULT_MAX_BANK",
    "DEFAULT_MAX_PIXELS",
    "DEFAULT_MODE",
    "DEFAULT_OVERLAP",
    "DEFAULT_PIXEL_FALSE_ALARM_RATE",
    "DTYPE_CHOICES",
    "ENGINE_CHOICES",
    "INTERACTIVE_DTYPE",
    "MAX_OVERLAP",
    "MODES",
    "PRECISION_CHOICES",
    "PROMPTS_BACKBONE",
    "RECORDED_SETTINGS",
    "DetectorConfig",
    "default_pixel_prompts",
    "option",
    "resolve_pixel_prompts",
]

AUTO = "auto"
CLS_CHOICES = ("cls1", "cls2")
DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")
#: what runs the network: PyTorch, or the exported graph on ONNX Runtime or OpenVINO
ENGINE_CHOICES = ("torch", "onnxruntime", "openvino")
#: the numeric precision of an engine (int8: exported engines only, statically quantized)
PRECISION_CHOICES = ("fp32", "bf16", "int8")
#: the dtype of the verbs people run on their own images (predict, fit, serve): the fastest
#: this machine runs accurately; eval and train keep fp32, the paper's numbers
INTERACTIVE_DTYPE = "auto"
#: the backbone the bundled pixel prompts were trained for (the paper's, TIPS L/14 high-res)
PROMPTS_BACKBONE = "l14h"
#: neighbouring tiles share at least this fraction of a tile
DEFAULT_OVERLAP = 0.25
#: the largest overlap accepted (0.9 already scores each pixel ~100 times)
MAX_OVERLAP = 0.9
#: images over this many pixels are refused from their header, before decoding
DEFAULT_MAX_PIXELS = 100_000_000
#: the settings a profile or an export records and applies wherever it is used
RECORDED_SETTINGS = (
    "model",
    "image_size",
    "prompt_type",
    "prompt_file",
    "pixel_prompts",
    "sigma",
    "cls",
    "tile",
    "tile_overlap",
    "roi",
)
#: of those, the ones checked against options given before anything loads (the model, prompts
#: and ROI are compared by content once loaded, :func:`~tipsomaly.identity.diff`)
_CHECKED_EARLY = ("image_size", "sigma", "cls", "tile", "tile_overlap")

C = TypeVar("C", bound="DetectorConfig")


def option(
    default: Any,
    help: str,  # noqa: A002 - the argparse word
    *,
    choices: tuple[str, ...] | None = None,
    metavar: str | tuple[str, ...] | None = None,
    flag: str | None = None,
) -> Any:
    """A dataclass field whose metadata carries the option's help, choices, metavar and
    command-line flag (default: ``--field-name``)."""
    return dataclasses.field(
        default=default,
        metadata={"help": help, "choices": choices, "metavar": metavar, "flag": flag},
    )


@dataclass(frozen=True, kw_only=True)
class DetectorConfig:
    """How a detector scores and decides; the defaults are the paper's (518 px, sigma 4,
    ``cls1``), zero-shot, untiled. Each field's help says what it is (the CLI's options are
    made of them); ``"auto"`` pixel prompts are :func:`default_pixel_prompts` for the model
    (and, in ``eval``, the dataset); ``device``/``dtype`` names resolve on the machine that
    runs; the image size and the tile are checked against the patch size where the model is
    known.

    Raises:
        InvalidOptionError: a value that cannot work (the message names the field).
    """

    model: Any = option(
        "l14h",
        "TIPS preset (see `tipsomaly weights list`; downloaded on first use), a model "
        "directory, or an export folder (`tipsomaly export`); l14h is the paper's backbone",
    )
    pixel_prompts: Any = option(
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
    image_size: int = option(518, "side of the square model input, a multiple of the patch size 14")
    sigma: float = option(4.0, "Gaussian smoothing of the maps, in model-input pixels")
    cls: str = option(
        "cls1",
        "CLS token giving image_score: cls1 (alt-text) or cls2 (dense captions); both scores "
        "are always reported",
        choices=CLS_CHOICES,
    )
    device: Any = option(AUTO, "auto (cuda if available, else cpu), cpu, cuda, cuda:1…")
    dtype: Any = option(
        "fp32",
        "matmul precision of the vision tower: fp32, bf16 (CPUs with AMX/AVX-512-BF16, recent "
        "GPUs), fp16 (GPUs); auto = the fastest this machine runs accurately",
        choices=DTYPE_CHOICES,
    )
    engine: str = option(
        "torch",
        "what runs the network: torch, or onnxruntime / openvino (exported on first use and "
        "cached under $TIPSOMALY_HOME, keyed by model, prompts, size, class, profile and "
        "precision)",
        choices=ENGINE_CHOICES,
    )
    precision: str | None = option(
        None,
        "fp32, bf16 (CPUs with AVX-512-BF16/AMX) or int8 (onnxruntime / openvino: statically "
        "quantized, calibrated on the profile's references or --calibration-images, the "
        "profile's thresholds recalibrated with the int8 engine); on torch it sets --dtype; "
        "default: --dtype's rule",
        choices=PRECISION_CHOICES,
    )
    calibration_images: str | os.PathLike | None = option(
        None,
        "folder of normal images to calibrate int8 quantization on (default: the profile's "
        "reference images)",
        metavar="DIR",
    )
    batch_size: int = option(8, "images per forward pass")
    max_pixels: int | None = option(
        DEFAULT_MAX_PIXELS,
        "refuse images larger than N pixels before decoding them (an error row, the run goes "
        "on); 0 or none: no limit",
        metavar="N",
    )
    tile: int | str | None = option(
        None,
        "tiled inference at native resolution for large images with small defects: "
        "overlapping tiles of SIZE original pixels, each resized to --image-size, maps blended "
        "back into one map at the original size; auto: tiles of --image-size pixels, larger "
        "when that takes more than 64 tiles; none: untiled",
        metavar="SIZE|auto",
    )
    tile_overlap: float = option(
        DEFAULT_OVERLAP, "least fraction of a tile that neighbouring tiles share", metavar="F"
    )
    roi: str | os.PathLike | None = option(
        None,
        "region-of-interest mask for every image (white = inspect, black = ignore, e.g. "
        "fixtures, labels, background); resized to each image when sizes differ (noted)",
        metavar="PATH",
    )
    profiles: tuple[Any, ...] = option(
        (),
        "few-shot profiles from `tipsomaly fit` (several: chosen by class name): decisions at "
        "the profile's calibrated false-alarm rate, masks and defects at its pixel threshold; "
        "its settings (tiling and ROI included) are used",
        metavar="DIR",
        flag="--profile",
    )
    mode: str | None = option(
        None,
        "with --profile: zero-shot (prompts only), few-shot (distance to the profile's normal "
        f"references) or fused (their mean); default: {DEFAULT_MODE}",
        choices=MODES,
    )
    image_threshold: float | None = option(
        None,
        "image-score threshold (scores in [0, 2]): is_anomalous = image_score >= threshold "
        "(replaces a profile's calibrated one)",
        metavar="T",
    )
    pixel_threshold: float | None = option(
        None,
        "pixel threshold on the maps (abnormal probability, [0, 1]): masks and defect records "
        "are map >= threshold (replaces a profile's calibrated one)",
        metavar="T",
        flag="--threshold",
    )
    min_defect_area: int = option(
        1, "drop defect regions smaller than PX pixels (specks)", metavar="PX"
    )
    pixel_size_mm: float | None = option(
        None, "side of one pixel in mm: defect areas also in mm2", metavar="MM"
    )
    defects_format: str = option(
        "records",
        "records: defects in scores.json and defects.csv; coco: also each defect's mask as "
        "COCO RLE (in scores.json and defects_coco.json)",
        choices=("records", "coco"),
    )
    offline: bool | None = None

    def __post_init__(self) -> None:
        def put(name: str, value: Any) -> None:
            object.__setattr__(self, name, value)

        if isinstance(self.pixel_prompts, str) and self.pixel_prompts.lower() == "none":
            put("pixel_prompts", None)  # one spelling of "no prompts"
        if isinstance(self.model, (str, os.PathLike)):
            non_empty(str(self.model), "model")
        positive_int(self.image_size, "image_size")
        non_empty(self.prompt_type, "prompt_type")
        in_range(self.sigma, "sigma", 0)
        choice(self.cls, "cls", CLS_CHOICES)
        if str(self.dtype).startswith("torch."):  # a torch dtype given in Python
            names = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
            put("dtype", names.get(str(self.dtype).removeprefix("torch."), str(self.dtype)))
        choice(self.dtype, "dtype", DTYPE_CHOICES)
        if not isinstance(self.device, str):  # a torch.device given in Python
            put("device", str(self.device))
        non_empty(self.device, "device")
        choice(self.engine, "engine", ENGINE_CHOICES)
        if self.precision is not None:
            choice(self.precision, "precision", PRECISION_CHOICES)
        positive_int(self.batch_size, "batch_size")
        if self.max_pixels is not None:
            positive_int(self.max_pixels, "max_pixels")
        put("tile", tile_side(self.tile))
        in_range(self.tile_overlap, "tile_overlap", 0, MAX_OVERLAP)
        put("tile_overlap", float(self.tile_overlap))
        if isinstance(self.profiles, (str, os.PathLike)) or not isinstance(self.profiles, Iterable):
            put("profiles", (self.profiles,))  # one profile given alone
        put("profiles", tuple(self.profiles))
        if self.mode is not None:
            choice(self.mode, "mode", MODES)
        if self.image_threshold is not None:
            in_range(self.image_threshold, "image_threshold", 0, 2, hint=IMAGE_SCORE_HINT)
        if self.pixel_threshold is not None:
            in_range(self.pixel_threshold, "pixel_threshold", 0, 1, hint=PIXEL_HINT)
        positive_int(self.min_defect_area, "min_defect_area")
        choice(self.defects_format, "defects_format", ("records", "coco"))
        if self.pixel_size_mm is not None:
            in_range(self.pixel_size_mm, "pixel_size_mm", 0, low_open=True)

    # -- derived -----------------------------------------------------------------------------
    @property
    def scoring_mode(self) -> str:
        """``mode`` made concrete: as given, else ``fused`` with profiles, ``zero-shot``
        without."""
        if self.mode is not None:
            return self.mode
        return DEFAULT_MODE if self.profiles else "zero-shot"

    @property
    def tiling(self) -> dict[str, Any] | None:
        """``{"tile", "overlap"}``, or None untiled (what identities record)."""
        return None if self.tile is None else {"tile": self.tile, "overlap": self.tile_overlap}

    def replace(self: C, **changes: Any) -> C:
        """A copy with ``changes`` (checked again)."""
        return dataclasses.replace(self, **changes)

    def for_dataset(self: C, dataset: str | None = None) -> C:
        """This config with ``pixel_prompts="auto"`` made concrete: the protocol's choice for
        the model (and ``dataset``, see :func:`default_pixel_prompts`)."""
        chosen = resolve_pixel_prompts(self.pixel_prompts, self.model, dataset)
        if chosen is self.pixel_prompts or chosen == self.pixel_prompts:
            return self
        return dataclasses.replace(self, pixel_prompts=chosen)

    def settings(self) -> dict[str, Any]:
        """The :data:`RECORDED_SETTINGS` as JSON (files as absolute paths), what profiles and
        exports write so that they can be applied again."""
        out: dict[str, Any] = {}
        for name in RECORDED_SETTINGS:
            value = getattr(self, name)
            if name in ("model", "prompt_file", "pixel_prompts", "roi"):
                value = _findable(value)
            out[name] = value
        if out["pixel_prompts"] is None:
            out["pixel_prompts"] = "none"
        return out

    # -- from records ------------------------------------------------------------------------
    @classmethod
    def from_record(
        cls: type[C],
        recorded: Mapping[str, Any],
        *,
        source: str,
        what: str = "fitted",
        given: Mapping[str, Any] | None = None,
        checked: Iterable[str] = _CHECKED_EARLY,
        error: type[Exception] = SetupMismatchError,
        **extra: Any,
    ) -> C:
        """A config of the ``recorded`` settings (see :data:`RECORDED_SETTINGS`; the rest at
        their defaults), then ``given`` (options set by the user, None = not given) and
        ``extra`` on top.

        Raises:
            SetupMismatchError (or ``error``): a given option of ``checked`` contradicts the
                recorded setting (by default those the scores depend on: image size, sigma,
                CLS token, tiling), naming each.
        """
        given = {k: v for k, v in (given or {}).items() if v is not None}
        base = {k: recorded[k] for k in RECORDED_SETTINGS if k in recorded}
        if base.get("tile") is None:
            base.pop("tile_overlap", None)  # untiled: an overlap given later is just kept
        checked = [k for k in checked if k in given]
        early = {k: base.get(k, getattr(_DEFAULTS, k)) for k in checked}
        theirs = {k: given[k] for k in checked}
        keys = [k for k in checked if k not in ("tile", "tile_overlap")]
        if len(keys) < len(checked):  # tiling compared as one entry: tile and overlap
            keys.append("tiling")
            for side, values in ((early, base), (theirs, {**base, **given})):
                tile = values.get("tile")
                overlap = values.get("tile_overlap", DEFAULT_OVERLAP)
                side["tiling"] = None if tile is None else {"tile": tile, "overlap": overlap}
        problems = diff(early, theirs, keys)
        if problems:
            raise error(
                f"{source} was {what} with another setup: {'; '.join(problems)}. Leave those "
                f"options out (the {what} settings apply) or make a new one with them"
            )
        return cls(**{**base, **given, **extra})

    @classmethod
    def from_profile(
        cls: type[C], *profiles: Any, given: Mapping[str, Any] | None = None, **extra: Any
    ) -> C:
        """The config that uses ``profiles`` (folders or loaded profiles): the first one's
        settings (model, size, prompts, sigma, CLS token, tiling, ROI), ``given`` options on
        top (one that contradicts a setting the scores depend on is refused, naming it).

        Raises:
            ProfileError: a profile folder cannot be read.
            InvalidOptionError: see :meth:`from_record`.

        Example:
            >>> config = DetectorConfig.from_profile("profiles/tile")  # doctest: +SKIP
            >>> Detector.from_config(config).predict("part.png", "tile")  # doctest: +SKIP
        """
        from .profile import ProfileMismatchError, profile_settings

        if not profiles:
            raise InvalidOptionError("from_profile needs at least one profile")
        recorded, name = profile_settings(profiles[0])
        return cls.from_record(
            recorded,
            source=name,
            given=given,
            error=ProfileMismatchError,
            profiles=tuple(profiles),
            **extra,
        )


#: what the thresholds' ranges mean, for their error messages
IMAGE_SCORE_HINT = "image_score = global + max patch probability, in [0, 2]"
PIXEL_HINT = "the maps are abnormal probabilities in [0, 1]"


def _findable(spec: Any) -> Any:
    """A spec naming an existing file or folder, made absolute; other values as they are."""
    if not isinstance(spec, (str, os.PathLike)):
        return None  # None, or an object (a loaded model or prompts): not recordable
    return os.path.abspath(spec) if os.path.exists(spec) else str(spec)


_DEFAULTS = DetectorConfig()


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


def resolve_pixel_prompts(value: Any, model: object, dataset: str | None = None) -> Any:
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
