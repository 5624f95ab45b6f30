"""Pixel prompts: safetensors I/O, the authors' .pth import without unpickling, bundled names."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch

from tipsomaly.method.pixel_prompts import (
    BUNDLED,
    PixelPromptError,
    PixelPrompts,
    load_pixel_prompts,
)
from tipsomaly.method.torch_pickle import UnsafePickleError, read_torch_file

# The authors' released .pth files (MIT, notice beside them), kept with the tests.
REFERENCE = Path(__file__).resolve().parents[1] / "fixtures" / "reference-prompts"
REFERENCE_FILES = {
    "trained-on-mvtec": "trained_on_mvtec_l14h_epoch2.pth",
    "trained-on-visa": "trained_on_visa_l14h_epoch2.pth",
}


def _trusted_reference_tensors(path: Path) -> list[torch.Tensor]:
    """What the pickle holds, read by torch's own restricted loader with an explicit allow-list."""
    allowed = [torch.nn.ParameterList, torch.nn.Parameter, torch._utils._rebuild_parameter]
    with torch.serialization.safe_globals(allowed):
        params = torch.load(path, weights_only=True)
    return [p.detach() for p in params]


@pytest.mark.parametrize("name", list(REFERENCE_FILES))
def test_reference_prompts_convert_exactly(name):
    path = REFERENCE / REFERENCE_FILES[name]
    converted = PixelPrompts.from_reference_pth(path)
    expected = _trusted_reference_tensors(path)
    assert converted.preambles.shape == (2, 8, 1024)
    assert torch.equal(converted.preambles[0], expected[0])
    assert torch.equal(converted.preambles[1], expected[1])
    bundled = load_pixel_prompts(name)  # what ships with the package
    assert torch.equal(bundled.preambles, converted.preambles)
    assert bundled.metadata["backbone"] == "tips-v1-l14-highres"
    assert "MIT" in bundled.metadata["license"]


def test_bundled_prompts_carry_their_licence():
    from tipsomaly.method.pixel_prompts import bundled_path

    folder = bundled_path(next(iter(BUNDLED))).parent
    assert "Alireza Salehi" in (folder / "LICENSE").read_text()


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def _write_pth(path: Path, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
        z.writestr("archive/byteorder", "little")


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "evil.pth"
    _write_pth(path, pickle.dumps({"learnable_prompts": _RunsCode()}, protocol=2))
    calls = []
    monkeypatch.setattr(os, "system", lambda *a: calls.append(a))
    with pytest.raises(UnsafePickleError, match="system"):
        read_torch_file(path)
    with pytest.raises(UnsafePickleError):
        PixelPrompts.from_reference_pth(path)
    assert calls == []


def test_non_zip_and_legacy_files_are_refused(tmp_path):
    path = tmp_path / "legacy.pth"
    path.write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(UnsafePickleError, match="not a PyTorch zip"):
        read_torch_file(path)


def test_torch_saved_plain_dict_is_read(tmp_path):
    path = tmp_path / "plain.pth"
    tensors = [torch.randn(4, 16), torch.randn(4, 16)]
    torch.save({"learnable_prompts": torch.nn.ParameterList(tensors)}, path)
    prompts = PixelPrompts.from_reference_pth(path)
    assert torch.equal(prompts.preambles[1], tensors[1])


def test_safetensors_round_trip_with_metadata(tmp_path):
    prompts = PixelPrompts.init_random(8, 64, generator=torch.Generator().manual_seed(0))
    path = prompts.save(tmp_path / "p.safetensors", backbone="custom", epochs=2)
    loaded = PixelPrompts.load(path)
    assert torch.equal(loaded.preambles, prompts.preambles)
    assert loaded.metadata["epochs"] == "2" and loaded.metadata["n_prompt"] == "8"
    assert abs(float(prompts.preambles.std()) - 0.02) < 0.005


def test_width_mismatch_is_a_clear_error():
    prompts = PixelPrompts(torch.zeros(2, 8, 1024), {"backbone": "tips-v1-l14-highres"})
    with pytest.raises(PixelPromptError, match="width 1024.*width 64"):
        prompts.check_width(64, "tiny")


def test_unknown_name_and_bad_files(tmp_path):
    with pytest.raises(PixelPromptError, match="trained-on-mvtec"):
        load_pixel_prompts("trained-on-nothing")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 10)
    with pytest.raises(PixelPromptError, match="bad.safetensors"):
        load_pixel_prompts(bad)
    with pytest.raises(PixelPromptError, match="shape"):
        PixelPrompts(torch.zeros(3, 8, 64))
