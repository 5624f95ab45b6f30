"""Argument types and the option groups that several verbs share (model, prompts, runtime)."""

from __future__ import annotations

import argparse

DTYPE_CHOICES = ("auto", "fp32", "bf16", "fp16")


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def non_empty(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


def add_model_options(p: argparse.ArgumentParser, *, dtype_default: str = "fp32") -> None:
    """``--model``, ``--prompt-type``, ``--prompt-file``, ``--image-size``, ``--device``,
    ``--dtype``: what every verb that runs the network needs."""
    from ..method.names import BUILTIN_PROMPT_TYPES

    p.add_argument(
        "--model",
        default="l14h",
        help="TIPS preset (see `tipsomaly weights list`; downloaded on first use) or a model "
        "directory (default: l14h, the paper's backbone)",
    )
    p.add_argument(
        "--prompt-type",
        default="industrial",
        help=f"fixed prompt ensemble: {', '.join(BUILTIN_PROMPT_TYPES)} or a name in "
        "--prompt-file (default: industrial)",
    )
    p.add_argument("--prompt-file", help="JSON file of prompt ensembles (schema of the built-in)")
    p.add_argument(
        "--image-size",
        type=positive_int,
        default=518,
        help="side of the square model input, a multiple of 14 (default: 518, as the paper)",
    )
    p.add_argument(
        "--device", default="auto", help="auto (cuda if available, else cpu), cpu, cuda, cuda:1…"
    )
    p.add_argument(
        "--dtype",
        choices=DTYPE_CHOICES,
        default=dtype_default,
        help="matmul precision of the vision tower: fp32, bf16 (CPUs with AMX/AVX-512-BF16, "
        "recent GPUs), fp16 (GPUs); auto = the fastest this machine runs accurately "
        f"(default: {dtype_default})",
    )
