"""Argument types, the help formatter, and the option groups several verbs share.

Every option is checked while the arguments are parsed (the ``type=`` adapters of
:mod:`tipsomaly.validation`) or, for what depends on the model or the machine (the image size
against the model's patch size, ``--device``, ``--dtype``, the output folder), by
:func:`check_model_options` / :func:`ensure_out_dir` before any model is loaded. Nothing here
imports torch at parse time.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidOptionError, OutputError, TipsomalyError
from ..method.config import DTYPE_CHOICES, DetectorConfig  # noqa: F401 - DTYPE_CHOICES re-exported
from ..validation import float_type, int_type, multiple_of, text_type
from .exit_codes import ExitCode

if TYPE_CHECKING:
    import torch

    from ..method.detector import Detector

# Reusable ``type=`` adapters (predict, eval, train; later fit and serve).
positive_int = int_type(1)
non_negative_int = int_type(0)
non_empty = text_type()
non_negative_float = float_type(0)
positive_float = float_type(0, low_open=True)
pixel_threshold = float_type(0, 1, hint="the maps are abnormal probabilities in [0, 1]")
image_threshold = float_type(0, 2, hint="image_score = global + max patch probability, in [0, 2]")
unit_interval_open = float_type(0, 1, high_open=True)
seed_int = int_type(0, 2**64 - 1)

#: the ``type=`` of each config field given as an option (defaults and help: the configs)
OPTION_TYPES = {
    "image_size": positive_int,
    "sigma": non_negative_float,
    "batch_size": positive_int,
    "workers": non_negative_int,
    "epochs": positive_int,
    "lr": positive_float,
    "betas": unit_interval_open,
    "n_prompt": positive_int,
    "seed": seed_int,
    "shots": non_negative_int,
    "shot_seed": seed_int,
}


def _shown(value: object) -> str:
    """A default as the README writes it: 4 for 4.0, 0.001 for 1e-3."""
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
        if isinstance(default, (list, tuple)):
            shown = " ".join(_shown(v) for v in default)
        else:
            shown = _shown(default)
        return f"{text} (default: {shown.replace('%', '%%')})"


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line and exit 1, as the README says.

    (argparse's own status 2 would collide with ``2 = no input images found``.)
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(ExitCode.ERROR, f"tipsomaly: error: {message} (see `{self.prog} --help`)\n")


def max_pixels_option(text: str) -> int | None:
    """``--max-pixels``: a pixel count >= 1, or ``0`` / ``none`` for no limit."""
    if text.strip().lower() in ("0", "none"):
        return None
    return positive_int(text)


def add_input_options(p: argparse.ArgumentParser) -> None:
    """``--max-pixels``: what every verb that reads images needs."""
    p.add_argument(
        "--max-pixels",
        type=max_pixels_option,
        default=100_000_000,
        metavar="N",
        help="refuse images larger than N pixels before decoding them (an error row, the run "
        "goes on); 0 or none: no limit",
    )


def apply_input_options(args: argparse.Namespace) -> None:
    """Make ``--max-pixels`` the process-wide limit of image loading."""
    from ..data.images import set_max_pixels

    set_max_pixels(args.max_pixels)


def add_config_option(
    p: argparse.ArgumentParser, config: type, name: str, **overrides: Any
) -> argparse.Action:
    """``--name`` for the field ``name`` of the dataclass ``config``.

    The default, choices, help and metavar come from the field (its metadata, see
    :func:`tipsomaly.method.config.option`), the argparse ``type=`` from :data:`OPTION_TYPES`;
    ``overrides`` replace any of them. A field without a default is a required option.
    """
    spec = {f.name: f for f in dataclasses.fields(config)}[name]
    meta = spec.metadata
    kwargs: dict[str, Any] = {"help": meta.get("help")}
    if spec.default is dataclasses.MISSING:
        kwargs["required"] = True
    else:
        kwargs["default"] = spec.default
    if isinstance(spec.default, bool):
        kwargs["action"] = "store_true"
    for key in ("choices", "metavar"):
        if meta.get(key):
            kwargs[key] = meta[key]
    if name in OPTION_TYPES:
        kwargs["type"] = OPTION_TYPES[name]
    kwargs.update(overrides)
    return p.add_argument("--" + name.replace("_", "-"), **kwargs)


def add_model_options(
    p: argparse.ArgumentParser,
    config: type[DetectorConfig] = DetectorConfig,
    *,
    skip: tuple[str, ...] = (),
    **overrides: dict[str, Any],
) -> None:
    """The options of every :class:`DetectorConfig` field (``--model``, ``--pixel-prompts``,
    ``--prompt-type``, ``--prompt-file``, ``--image-size``, ``--sigma``, ``--cls``, ``--device``,
    ``--dtype``, ``--batch-size``) but those in ``skip``, read from ``config`` (the verb's
    config, a subclass); ``overrides`` maps a field to its :func:`add_config_option` overrides
    (``dtype={"default": "auto"}``)."""
    for spec in dataclasses.fields(DetectorConfig):
        if spec.name not in skip:
            add_config_option(p, config, spec.name, **overrides.get(spec.name, {}))


def check_model_options(args: argparse.Namespace) -> tuple[torch.device, torch.dtype]:
    """The checks that need the model's description or the machine, before any model loads.

    Reads ``--model`` (a preset name, or the directory's ``model.json`` against its schema),
    checks ``--image-size`` against the model's patch size and resolves ``--device`` and
    ``--dtype``. Returns the resolved device and dtype; raises a :class:`TipsomalyError`.
    """
    from ..tips.presets import model_configs

    vision, _ = model_configs(args.model)
    multiple_of(args.image_size, "--image-size", vision.patch_size, what="the model's patch size")
    return resolve_runtime(args.device, args.dtype)


def build_detector(
    args: argparse.Namespace, device: torch.device, dtype: torch.dtype, **extra: Any
) -> Detector:
    """The :class:`~tipsomaly.method.detector.Detector` of the model options in ``args``
    (every :class:`DetectorConfig` field, ``--pixel-prompts auto`` resolved for the model,
    ``--offline``) on ``device`` / ``dtype``; ``extra`` adds the verb's own arguments
    (``profile``, ``mode``, ``tile`` ...). Prompt, pixel-prompt and model-file problems raise
    :class:`TipsomalyError`, which ``main()`` shows as one line."""
    from ..method.config import resolve_pixel_prompts
    from ..method.detector import Detector

    return Detector(
        args.model,
        prompt_type=args.prompt_type,
        prompt_file=args.prompt_file,
        pixel_prompts=resolve_pixel_prompts(args.pixel_prompts, args.model),
        image_size=args.image_size,
        sigma=args.sigma,
        cls=args.cls,
        device=device,
        dtype=dtype,
        batch_size=args.batch_size,
        offline=args.offline or None,
        **extra,
    )


def resolve_runtime(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """``--device`` and ``--dtype`` resolved on this machine; the error names the option."""
    from ..tips.runtime import resolve_device, resolve_dtype

    try:
        resolved = resolve_device(device)
    except ValueError as exc:
        raise InvalidOptionError(f"--device {device}: {exc}") from None
    try:
        return resolved, resolve_dtype(dtype, resolved)
    except ValueError as exc:
        raise InvalidOptionError(f"--dtype {dtype} on {resolved}: {exc}") from None


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


def dtype_name(dtype: Any) -> str:
    """``fp32`` / ``bf16`` / ``fp16`` for a torch dtype (the names the options use)."""
    return {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(
        str(dtype).removeprefix("torch."), str(dtype).removeprefix("torch.")
    )
