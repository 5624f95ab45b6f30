"""TIPSv2 from the Hugging Face hub: one model.safetensors, temperature in config.json."""

from __future__ import annotations

import json
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from huggingface_hub.errors import LocalEntryNotFoundError, RemoteEntryNotFoundError
from safetensors.numpy import save_file

from tipsomaly.tips import model as model_module
from tipsomaly.tips.model import build_model, read_model_description
from tipsomaly.tips.presets import get_preset
from tipsomaly.tips.weights import WeightsUnavailableError, weights_dir


def _publish(repo, case) -> None:
    """Put ``case``'s weights in ``repo`` as the hub has them: one model.safetensors (hub key
    layout), the temperature in config.json."""
    config = case.config
    with (
        np.load(case.dir / config["vision"]["npz"]) as v,
        np.load(case.dir / config["text"]["npz"]) as t,
    ):
        arrays = {f"vision_encoder.{k}": v[k] for k in v.files}
        key = config["text"].get("temperature_key", "temperature")
        arrays.update({f"text_encoder.{k}": t[k] for k in t.files if k != key})
    save_file(arrays, str(repo / "model.safetensors"))
    (repo / "config.json").write_text(json.dumps({"temperature": 0.05, "img_size": 448}))


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    """A hub repo in a folder (empty until :func:`_publish` fills it) and the download calls."""
    repo = tmp_path / "repo"
    repo.mkdir()
    calls = []

    def download(repo_id, filename, local_files_only=False):
        calls.append((repo_id, filename, local_files_only))
        if local_files_only and not (repo / ".cached").exists():
            raise LocalEntryNotFoundError("not in the local cache")
        if not (repo / filename).exists():
            response = SimpleNamespace(headers={}, request=None, status_code=404)
            raise RemoteEntryNotFoundError(f"{filename} not in {repo_id}", response=response)
        return str(repo / filename)

    monkeypatch.setattr("huggingface_hub.hf_hub_download", download)
    return repo, calls


def test_hub_checkpoint_loads_like_the_npz_files(fake_hub, golden):
    repo, calls = fake_hub
    _publish(repo, golden)
    weights_dir().mkdir(parents=True, exist_ok=True)
    tokenizer = golden.config["text"].get("tokenizer", "tokenizer.model")
    shutil.copy(golden.dir / tokenizer, weights_dir() / "tokenizer.model")
    files = model_module._hub_files(get_preset("v2-b14"), offline=False)
    assert files.combined == repo / "model.safetensors" and files.temperature == 0.05
    assert files.tokenizer == weights_dir() / "tokenizer.model"  # the repo has none: shared one
    vision, text = read_model_description(golden.dir / "golden.json")
    hub_model = build_model(vision, text, files)
    images = torch.from_numpy(golden["images"][:2])
    with torch.no_grad():
        got = hub_model.encode_image(images).patches
    assert got.shape == golden["patches"][:2].shape
    assert float(np.abs(got.numpy() - golden["patches"][:2]).max()) <= golden.tol["features_abs"]
    assert hub_model.temperature == 0.05
    assert ("google/tipsv2-b14", "model.safetensors", False) in calls


def test_hub_offline_without_cache_names_the_repo_and_the_current_cli(fake_hub):
    """The advice names `hf download`: current huggingface_hub no longer installs
    `huggingface-cli`."""
    with pytest.raises(WeightsUnavailableError) as info:
        model_module._hub_files(get_preset("v2-l14"), offline=True)
    assert "`hf download google/tipsv2-l14`" in str(info.value)
    assert "huggingface-cli" not in str(info.value)


def test_v1_presets_are_not_on_the_hub():
    with pytest.raises(ValueError, match="not on the Hugging Face hub"):
        model_module._hub_files(get_preset("l14h"), offline=True)
