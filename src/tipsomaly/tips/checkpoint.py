"""Reading TIPS checkpoints safely (.npz without pickle, safetensors) into the towers."""

from __future__ import annotations

import logging
import math
import os
import zipfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import TipsomalyError

logger = logging.getLogger(__name__)


class CheckpointError(TipsomalyError, ValueError):
    """A checkpoint file is unreadable or does not fit the model it is loaded into."""


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an ``.npz`` file, read with ``allow_pickle=False``.

    Raises :class:`CheckpointError` naming the file when it is missing, truncated, not an
    ``.npz`` archive, or holds object (pickled) arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (zipfile.BadZipFile, EOFError, OSError) as exc:
        raise CheckpointError(
            f"{path} is not a readable .npz checkpoint (truncated or corrupt?): {exc}. "
            "Delete it and download it again."
        ) from None
    except ValueError as exc:  # e.g. "Object arrays cannot be loaded when allow_pickle=False"
        raise CheckpointError(f"{path}: refused to load ({exc})") from None


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as numpy arrays (fp32 kept as is)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, TypeError) as exc:  # TypeError: e.g. BF16
        raise CheckpointError(f"{path} is not a readable safetensors file: {exc}") from None


def split_prefixed(
    arrays: Mapping[str, np.ndarray], prefixes: Mapping[str, str]
) -> dict[str, dict[str, np.ndarray]]:
    """Split one flat state dict by key prefix, e.g. ``{"vision": "vision_encoder."}``.

    Keys matching none of the prefixes are kept under ``""`` so strict loading can report them.
    """
    out: dict[str, dict[str, np.ndarray]] = {name: {} for name in prefixes}
    out[""] = {}
    for key, value in arrays.items():
        for name, prefix in prefixes.items():
            if key.startswith(prefix):
                out[name][key[len(prefix) :]] = value
                break
        else:
            out[""][key] = value
    return out


def load_into(module: nn.Module, arrays: Mapping[str, np.ndarray], source: str) -> None:
    """Copy ``arrays`` into ``module``'s parameters, requiring an exact key and shape match.

    Every missing, unexpected and mis-shaped key is listed in one :class:`CheckpointError`
    that names ``source`` (the file or files the arrays came from).
    """
    expected = module.state_dict()
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    misshaped = sorted(
        f"{key}: file {tuple(arrays[key].shape)} vs model {tuple(expected[key].shape)}"
        for key in set(expected) & set(arrays)
        if tuple(arrays[key].shape) != tuple(expected[key].shape)
    )
    if missing or unexpected or misshaped:
        lines = [f"{source} does not match the model description:"]
        for title, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("wrong shape", misshaped),
        ):
            if keys:
                shown = keys[:20] + ([f"... and {len(keys) - 20} more"] if len(keys) > 20 else [])
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(shown))
        lines.append("Check that the model.json (or preset) matches this checkpoint.")
        raise CheckpointError("\n".join(lines))
    bad = [k for k, v in arrays.items() if not np.issubdtype(np.asarray(v).dtype, np.floating)]
    if bad:
        raise CheckpointError(f"{source}: non-floating arrays for {', '.join(sorted(bad))}")
    state = {
        key: torch.from_numpy(np.ascontiguousarray(value)).to(expected[key].dtype)
        for key, value in arrays.items()
    }
    # Checked in the model's dtype: a float64 1e300 is as unusable as an inf once cast.
    nonfinite = sorted(k for k, t in state.items() if not bool(torch.isfinite(t).all()))
    if nonfinite:
        shown = ", ".join(nonfinite[:10]) + (
            f" and {len(nonfinite) - 10} more" if len(nonfinite) > 10 else ""
        )
        raise CheckpointError(
            f"{source}: NaN or infinite values in {shown}; the file is corrupt or not a TIPS "
            "checkpoint (delete it and download it again)"
        )
    module.load_state_dict(state, strict=True)


def pop_scalar(arrays: dict[str, np.ndarray], key: str, source: str) -> float | None:
    """Remove and return a scalar entry (e.g. ``temperature``) if present."""
    if key not in arrays:
        return None
    value = np.asarray(arrays.pop(key))
    if value.size != 1:
        raise CheckpointError(f"{source}: '{key}' should be a scalar, has shape {value.shape}")
    if not (np.issubdtype(value.dtype, np.floating) or np.issubdtype(value.dtype, np.integer)):
        raise CheckpointError(f"{source}: '{key}' should be a number, has dtype {value.dtype}")
    return float(value.reshape(()))


def check_temperature(value: object, source: str) -> float:
    """The logit temperature as a float; refuses anything but a finite number > 0.

    ``source`` (the file or description it came from) starts the :class:`CheckpointError`.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
        raise CheckpointError(f"{source}: temperature must be a number, got {value!r}")
    temperature = float(value)
    if not math.isfinite(temperature) or temperature <= 0:
        raise CheckpointError(
            f"{source}: temperature must be a finite number > 0, got {temperature!r}"
        )
    return temperature
