"""Device and dtype names resolved against the hardware."""

from __future__ import annotations

import pytest
import torch

from tipsomaly.tips import runtime


def test_auto_device_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert runtime.resolve_device("auto").type == "cpu"
    with pytest.raises(ValueError, match="no CUDA"):
        runtime.resolve_device("cuda")
    with pytest.raises(ValueError, match="not a device"):
        runtime.resolve_device("floppy")


@pytest.mark.parametrize("native,expected", [(True, torch.bfloat16), (False, torch.float32)])
def test_auto_dtype_on_cpu_follows_bf16_support(monkeypatch, native, expected):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: native)
    assert runtime.resolve_dtype("auto", torch.device("cpu")) == expected


def test_bf16_on_a_cpu_without_it_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    with pytest.raises(ValueError, match="no bf16 matrix instructions"):
        runtime.resolve_dtype("bf16", torch.device("cpu"))
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert runtime.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16


def test_fp16_is_refused_on_cpu_and_names_are_checked():
    with pytest.raises(ValueError, match="GPUs"):
        runtime.resolve_dtype("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown dtype"):
        runtime.resolve_dtype("fp8")
    assert runtime.resolve_dtype("fp32") == torch.float32


def test_cpu_flags_are_read(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor : 0\nflags : fpu avx2 avx512f avx512_bf16\n")
    real_open = open
    monkeypatch.setattr(
        "builtins.open",
        lambda p, *a, **k: real_open(cpuinfo if p == "/proc/cpuinfo" else p, *a, **k),
    )
    assert runtime.cpu_has_native_bf16() is True
    cpuinfo.write_text("processor : 0\nflags : fpu avx2\n")
    assert runtime.cpu_has_native_bf16() is False


def test_device_and_dtype_mistakes_are_user_errors(monkeypatch):
    """They reach the CLI as one line (TipsomalyError), and stay ValueErrors for callers."""
    from tipsomaly.errors import InvalidOptionError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for call in (
        lambda: runtime.resolve_device("cuda"),
        lambda: runtime.resolve_device("floppy"),
        lambda: runtime.resolve_dtype("fp8"),
        lambda: runtime.resolve_dtype("fp16", torch.device("cpu")),
    ):
        with pytest.raises(InvalidOptionError):
            call()
