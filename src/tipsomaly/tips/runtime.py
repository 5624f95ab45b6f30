"""Where and in which precision to run: ``--device`` and ``--dtype`` names, resolved here."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)

DTYPE_NAMES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto``: the first CUDA GPU if any, else the CPU; other names as torch reads them."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but PyTorch sees no CUDA GPU here")
    return device


def resolve_dtype(
    name: str | torch.dtype = "fp32", device: torch.device | None = None
) -> torch.dtype:
    """``fp32`` / ``bf16`` / ``fp16`` → a torch dtype, refusing what the hardware cannot run.

    ``auto`` is fp32 for now (bit-comparable with the reference); bf16/fp16 are opt-in.
    """
    if isinstance(name, torch.dtype):
        dtype = name
    elif name == "auto":
        dtype = torch.float32
    else:
        try:
            dtype = DTYPE_NAMES[name.lower()]
        except KeyError:
            raise ValueError(f"unknown dtype {name!r}; use fp32, bf16 or fp16") from None
    device = device or torch.device("cpu")
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("fp16 is for GPUs; on the CPU use bf16 (or fp32)")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError("this GPU has no bf16 support; use fp16 (or fp32)")
    return dtype
