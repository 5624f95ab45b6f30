"""Where and in which precision to run: ``--device`` and ``--dtype`` names, resolved here."""

from __future__ import annotations

import logging

import torch

from ..errors import InvalidOptionError

logger = logging.getLogger(__name__)

DTYPE_NAMES = {
    "fp32": torch.float32,
    "float32": torch.float32,
    "bf16": torch.bfloat16,
    "bfloat16": torch.bfloat16,
    "fp16": torch.float16,
    "float16": torch.float16,
}


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto``: the first CUDA GPU if any, else the CPU; other names as torch reads them.

    A device this machine lacks raises :class:`~tipsomaly.errors.InvalidOptionError` (a
    ``ValueError``) saying what to use instead.
    """
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise InvalidOptionError(f"not a device PyTorch knows ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InvalidOptionError("PyTorch sees no CUDA GPU here; use cpu (or auto)")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise InvalidOptionError(f"there are only {torch.cuda.device_count()} CUDA device(s)")
    return device


def cpu_has_native_bf16() -> bool | None:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX-512-BF16, AMX, Arm BF16).

    Read from ``/proc/cpuinfo``; ``None`` where that is unavailable (not Linux). Without such
    instructions PyTorch emulates bf16 and runs it several times slower than fp32.
    """
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return None
    flags = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags.update(line.split(":", 1)[1].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_dtype(
    name: str | torch.dtype = "fp32", device: torch.device | None = None
) -> torch.dtype:
    """``fp32`` / ``bf16`` / ``fp16`` / ``auto`` → the vision tower's matmul dtype.

    ``auto``: bf16 on GPUs that support it (else fp16), bf16 on CPUs with bf16 matrix
    instructions, fp32 elsewhere. A format the hardware lacks raises
    :class:`~tipsomaly.errors.InvalidOptionError` (a ``ValueError``) saying so.
    """
    device = device or torch.device("cpu")
    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if isinstance(name, torch.dtype):
        dtype = name
    else:
        try:
            dtype = DTYPE_NAMES[name.lower()]
        except KeyError:
            raise InvalidOptionError(
                f"unknown dtype {name!r}; use fp32, bf16, fp16 or auto"
            ) from None
    if dtype == torch.float16 and device.type == "cpu":
        raise InvalidOptionError("fp16 is for GPUs; on the CPU use fp32 (or bf16 where supported)")
    if dtype == torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise InvalidOptionError("this GPU has no bf16 support; use fp16 (or fp32)")
    if dtype == torch.bfloat16 and device.type == "cpu":
        native = cpu_has_native_bf16()
        if native is False:
            raise InvalidOptionError(
                "this CPU has no bf16 matrix instructions (AVX-512-BF16 or AMX): PyTorch would "
                "emulate bf16, several times slower than fp32; use fp32 (or auto)"
            )
        if native is None:
            logger.info("cannot tell whether this CPU runs bf16 natively; using bf16 as asked")
    return dtype
