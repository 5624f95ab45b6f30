"""Argument types, the help formatter, and the option groups several verbs share.

The options of the settings come from the configs' fields (:func:`add_settings`), unset by
default, and become a config in one place (:func:`config_from_args`: a profile's settings
first, then the options given, then the defaults). Every option is checked while the arguments
are parsed (the ``type=`` adapters of :mod:`tipsomaly.validation`), when the config is built
(its checks), or, for what depends on the model or the machine (the image size against the
model's patch size, ``--device``, ``--dtype``, the output folder), by :func:`resolved` /
:func:`ensure_out_dir` before any model is loaded. Nothing here imports torch at parse time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..errors import InvalidOptionError, OutputError, TipsomalyError
from ..method.config import (
    IMAGE_SCORE_HINT,
    INTERACTIVE_DTYPE,
    PIXEL_HINT,
    RECORDED_SETTINGS,
    DetectorConfig,
)
from ..validation import float_type, int_type, multiple_of, text_type, tile_side
from .exit_codes import ExitCode

if TYPE_CHECKING:
    import torch

    from ..method.pipeline import Predictor

C = TypeVar("C", bound=DetectorConfig)

# Reusable ``type=`` adapters (predict, eval, train; later fit and serve).
positive_int = int_type(1)
non_negative_int = int_type(0)
non_empty = text_type()
non_negative_float = float_type(0)
positive_float = float_type(0, low_open=True)
pixel_threshold = float_type(0, 1, hint=PIXEL_HINT)
image_threshold = float_type(0, 2, hint=IMAGE_SCORE_HINT)
unit_interval_open = float_type(0, 1, high_open=True)
seed_int = int_type(0, 2**64 - 1)


def _shown(value: object) -> str:
    """A default as the README writes it: 4 for 4.0, 0.001 for 1e-3; lists by spaces."""
    if isinstance(value, (list, tuple)):
        return " ".join(_shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps epilogs as written and shows every option's default that means something.

    ``(default: X)`` is appended unless the help already says ``default``; options without a
    default (None) and off-by-default flags get nothing.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text.lower()
            or not action.option_strings
            or default is None
            or default is False
            or default is argparse.SUPPRESS
        ):
            return text
        return f"{text} (default: {_shown(default).replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit 1, as the README says.

    (argparse's own status 2 would collide with ``2 = no input images found``.)
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(ExitCode.ERROR, f"tipsomaly: error: {message} (see `{self.prog} --help`)\n")


def max_pixels_option(text: str) -> int:
    """``--max-pixels``: a pixel count >= 1, or ``0`` / ``none`` for no limit (0 here)."""
    if text.strip().lower() in ("0", "none"):
        return NO_LIMIT
    return positive_int(text)


def tile_option(text: str) -> int | str:
    """``--tile``: a side in pixels (>= 1) or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    return positive_int(text)


#: the defaults of the verbs people run on their own images (predict, fit, serve); the rest:
#: the configs'
DEFAULTS = {"dtype": INTERACTIVE_DTYPE}
#: what the help says of the settings a profile (or an export) records
RECORDED = "with --profile, the profile's; with an export as --model, the export's"
#: the settings of decisions and defect records (fit, eval and train have no use for them)
DECISION_SETTINGS = (
    "image_threshold",
    "pixel_threshold",
    "min_defect_area",
    "pixel_size_mm",
    "defects_format",
)
#: what runs the network (``--engine``, ``--precision``, ``--calibration-images``): the verbs
#: that need torch itself (fit, train) leave them out
ENGINE_SETTINGS = ("engine", "precision", "calibration_images")
#: the settings of a verb that uses profiles (fit makes them, train has none)
PROFILE_SETTINGS = ("profiles", "mode")
#: ``--max-pixels 0``: no limit (None in the config, where None cannot mean "not given")
NO_LIMIT = 0
#: the ``type=`` of each config field given as an option (defaults and help: the configs)
OPTION_TYPES: dict[str, Any] = {
    "model": non_empty,
    "prompt_type": non_empty,
    "image_size": positive_int,
    "sigma": non_negative_float,
    "batch_size": positive_int,
    "max_pixels": max_pixels_option,
    "tile": tile_option,
    "tile_overlap": float_type(0, 0.9, hint="a fraction of a tile, e.g. 0.25"),
    "image_threshold": image_threshold,
    "pixel_threshold": pixel_threshold,
    "min_defect_area": positive_int,
    "pixel_size_mm": positive_float,
    "workers": non_negative_int,
    "epochs": positive_int,
    "lr": positive_float,
    "betas": unit_interval_open,
    "n_prompt": positive_int,
    "seed": seed_int,
    "shots": non_negative_int,
    "shot_seed": seed_int,
}
#: the fields given as several values
OPTION_NARGS = {"profiles": "+", "classes": "+", "betas": 2}


def add_config_option(
    p: argparse.ArgumentParser | argparse._ActionsContainer,
    config: type,
    name: str,
    *,
    default: Any = dataclasses.MISSING,
    note: str = "",
    **overrides: Any,
) -> argparse.Action:
    """``--name`` for the field ``name`` of the dataclass ``config``.

    The help, choices, metavar and flag come from the field's metadata (see
    :func:`tipsomaly.method.config.option`), the argparse ``type=`` from :data:`OPTION_TYPES`.
    The option's own default is None (not given): the config fills in its default when it is
    built (:func:`config_from_args`), so a profile's or an export's settings can come first.
    The help shows ``default`` (the field's unless given) and ``note``. A field without a
    default is a required option.
    """
    spec = {f.name: f for f in dataclasses.fields(config)}[name]
    meta = spec.metadata
    kwargs: dict[str, Any] = {"default": None}
    shown = spec.default if default is dataclasses.MISSING else default
    if spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
        kwargs["required"] = True
        kwargs["help"] = meta.get("help")
    else:
        if isinstance(shown, bool):
            kwargs["action"] = "store_true"
            kwargs["default"] = False
        kwargs["help"] = _with_default(meta.get("help") or "", shown, note)
    for key in ("choices", "metavar"):
        if meta.get(key):
            kwargs[key] = meta[key]
    if name in OPTION_TYPES:
        kwargs["type"] = OPTION_TYPES[name]
    if name in OPTION_NARGS:
        kwargs["nargs"] = OPTION_NARGS[name]
        if name == "profiles":
            kwargs["action"] = "extend"
    if "help" in overrides and "required" not in kwargs:
        overrides["help"] = _with_default(overrides["help"], shown, note)
    kwargs.update(overrides)
    flag = meta.get("flag") or "--" + name.replace("_", "-")
    return p.add_argument(flag, dest=name, **kwargs)


def _with_default(text: str, value: Any, note: str) -> str:
    if "default" in text.lower() and not note:
        return text
    if value is None or value == () or value is False:
        shown = "none" if value is None or value == () else ""
    else:
        shown = _shown(value)
    inside = ("default: " + shown if shown else "") + (f"; {note}" if note and shown else note)
    return f"{text} ({inside.replace('%', '%%')})" if inside else text


def add_settings(
    p: argparse.ArgumentParser,
    config: type[DetectorConfig] = DetectorConfig,
    *,
    skip: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
    recorded_note: str = "",
    **overrides: dict[str, Any],
) -> None:
    """An option for every field of ``config`` that has help (``--model``, ``--pixel-prompts``
    … ``--tile``, ``--roi``, ``--profile``, ``--threshold`` …) but those in ``skip``.
    ``defaults``: the verb's own defaults (shown in the help; :func:`config_from_args` applies
    them); ``recorded_note``: said after the defaults of the settings a profile or export
    records; ``overrides`` maps a field to :func:`add_config_option` keyword overrides."""
    defaults = defaults or {}
    for spec in dataclasses.fields(config):
        if spec.name in skip or not spec.metadata.get("help"):
            continue
        note = recorded_note if spec.name in RECORDED_SETTINGS else ""
        extra = dict(overrides.get(spec.name, {}))
        if spec.name in defaults:
            extra["default"] = defaults[spec.name]
        add_config_option(p, config, spec.name, note=note, **extra)


def given_settings(args: argparse.Namespace, config: type = DetectorConfig) -> dict[str, Any]:
    """The fields of ``config`` the user set on the command line (a flag left out is None),
    ``--offline`` included."""
    given: dict[str, Any] = {}
    for spec in dataclasses.fields(config):
        if not spec.metadata.get("help"):  # not an option (offline: the common flag, below)
            continue
        value = getattr(args, spec.name, None)
        if value is None or (value is False and spec.default is False):
            continue
        if spec.name == "max_pixels" and value == NO_LIMIT:
            given[spec.name] = None  # given: no limit
            continue
        given[spec.name] = tuple(value) if isinstance(value, list) else value
    if getattr(args, "offline", False):
        given["offline"] = True
    return given


def check_mode(args: argparse.Namespace, verb: str) -> None:
    """``--mode`` says how a profile's class is scored: refused without ``--profile`` (an
    export folder as ``--model`` carries its own mode, checked against it later)."""
    from ..deploy.metadata import is_export_dir

    if args.mode is not None and not args.profiles and not is_export_dir(args.model):
        raise InvalidOptionError(f"--mode needs --profile (without one, {verb} is zero-shot)")


def config_from_args(
    args: argparse.Namespace,
    config: type[C] = DetectorConfig,  # type: ignore[assignment]
    *,
    defaults: dict[str, Any] | None = None,
    **extra: Any,
) -> C:
    """The config of the options given: with ``--profile``, the first profile's settings
    first (:meth:`DetectorConfig.from_profile`), then the options given, then the verb's
    ``defaults`` for what is still unset; ``extra`` on top (resolved device...).

    Raises:
        ProfileError, ProfileMismatchError: a profile that cannot be read, or an option that
            contradicts its settings (named).
        InvalidOptionError: a value the config refuses.
    """
    given = given_settings(args, config)
    for name, value in (defaults or {}).items():
        given.setdefault(name, value)
    profiles = given.pop("profiles", ())
    if profiles:
        return config.from_profile(*profiles, given=given, **extra)
    return config(**{**given, **extra})


def resolved(config: C) -> C:
    """``config`` with its device and dtype resolved on this machine, after the checks that
    need the model's description (the image size a multiple of its patch size, a tile no
    smaller than one patch), before any model loads. An export folder as the model: only the
    device and dtype an export runs with.

    Raises:
        InvalidOptionError: naming the option (``--device cuda: ...``).
    """
    from ..deploy.metadata import is_export_dir

    if not is_export_dir(config.model):
        from ..tips.presets import model_configs

        vision, _ = model_configs(config.model)
        multiple_of(
            config.image_size, "--image-size", vision.patch_size, what="the model's patch size"
        )
        tile_side(config.tile, "--tile", at_least=vision.patch_size, what="the model's patch size")
    config = resolve_engine(config)
    device, dtype = resolve_runtime(config.device, config.dtype)
    return config.replace(device=str(device), dtype=dtype)  # the config names a torch dtype


def resolve_engine(config: C) -> C:
    """``--engine`` / ``--precision`` made concrete before anything loads: the torch engine's
    dtype (``--precision`` is ``--dtype`` then), an exported engine's CPU and precision. Each
    refusal is one line: int8 on torch, int8 without calibration images, bf16 on ONNX Runtime
    or on a CPU without bf16 instructions (:func:`resolve_runtime`'s check, as ``--dtype``)."""
    from ..deploy.metadata import is_export_dir

    engine, precision = config.engine, config.precision
    if engine == "torch" and is_export_dir(config.model):
        return config  # an export runs in its graph's precision (ExportedDetector checks it)
    if engine == "torch":
        if precision == "int8":
            raise InvalidOptionError(
                "--precision int8 runs on --engine onnxruntime or openvino (torch has no int8 path)"
            )
        # on torch, --precision is the --dtype it names (over the verb's default dtype)
        return config if precision is None else config.replace(dtype=precision)
    if is_export_dir(config.model):
        raise InvalidOptionError(
            f"--engine {engine}: --model {config.model} is an export already (leave --engine out)"
        )
    if str(config.device) not in ("auto", "cpu"):
        raise InvalidOptionError(f"--engine {engine} runs on the CPU, not --device {config.device}")
    precision = precision or "fp32"
    if precision == "bf16":
        if engine != "openvino":
            raise InvalidOptionError(
                "--precision bf16: ONNX Runtime's CPU provider has no bf16 path; use --engine "
                "openvino or torch"
            )
        resolve_runtime("cpu", "bf16")  # refused on a CPU without AVX-512-BF16 / AMX
    if precision == "int8" and not config.profiles and config.calibration_images is None:
        raise InvalidOptionError(
            "--precision int8 needs calibration images: give --profile DIR (its references) "
            "or --calibration-images DIR"
        )
    return config.replace(device="cpu", dtype="fp32", precision=precision)


def open_predictor(
    config: DetectorConfig, given: dict[str, Any], class_name: str | None = None
) -> Predictor:
    """The predictor of the options: an export's :class:`ExportedDetector` when ``--model``
    names an export folder (``given`` are the options set, checked against the export's),
    the cached export of ``class_name`` with ``--engine onnxruntime|openvino`` (exported on
    first use, :func:`tipsomaly.runners.engines.open_engine`), else the :class:`Detector` of
    ``config``. Model, prompt and profile problems raise :class:`TipsomalyError`, which
    ``main()`` shows as one line."""
    from ..deploy.metadata import is_export_dir

    if config.engine != "torch":
        from ..runners.engines import open_engine

        return open_engine(config, given, class_name)
    if is_export_dir(config.model):
        from ..deploy.inferencers import ExportedDetector

        given = {k: v for k, v in given.items() if k != "model"}
        return ExportedDetector(config.model, **given)
    from ..method.detector import Detector

    return Detector.from_config(config)


def resolve_runtime(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """``--device`` and ``--dtype`` resolved on this machine; the error names the option."""
    from ..tips.runtime import resolve_device, resolve_dtype

    try:
        resolved_device = resolve_device(device)
    except ValueError as exc:
        raise InvalidOptionError(f"--device {device}: {exc}") from None
    try:
        return resolved_device, resolve_dtype(dtype, resolved_device)
    except ValueError as exc:
        raise InvalidOptionError(f"--dtype {dtype} on {resolved_device}: {exc}") from None


def ensure_out_dir(path: str | os.PathLike) -> Path:
    """Create the output folder ``path`` and check that files can be written in it.

    Raises :class:`OutputError` (``cannot write PATH: reason``) for a path that is a file, under
    a file, on a read-only file system, without permission or on a full disk.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise OutputError(out, "exists and is not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".tipsomaly-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(exc.filename or out, exc) from None
    return out


@contextlib.contextmanager
def writing(path: str | os.PathLike) -> Iterator[None]:
    """Turn a plain ``OSError`` raised while writing outputs into :class:`OutputError`."""
    try:
        yield
    except TipsomalyError:
        raise
    except OSError as exc:
        raise OutputError(exc.filename or path, exc) from exc


def report_wanted(args: argparse.Namespace) -> bool:
    """Whether a verb writes ``report.html``: unless ``--no-report``. Without matplotlib (the
    ``report`` extra) the run goes on without a report, saying so in one line: a missing
    plotting library is no reason to refuse scoring."""
    if args.no_report:
        return False
    from ..errors import available

    if available("matplotlib"):
        return True
    print(
        "note: no report.html: the report's plots need matplotlib: pip install "
        "'tipsomaly[report]' (--no-report silences this note)",
        file=sys.stderr,
    )
    return False
