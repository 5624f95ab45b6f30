"""Model directories and strict, pickle-free checkpoint loading."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from goldens import golden_dirs
from tipsomaly.tips import ConfigError, load_model
from tipsomaly.tips.checkpoint import CheckpointError, read_npz
from tipsomaly.tips.config import TextConfig, VisionConfig
from tipsomaly.tips.model import TipsModel

GOLDEN = golden_dirs()[0]


def _vision(case=GOLDEN) -> dict:
    return json.loads((case / "golden.json").read_text())["vision"]


def _model_dir(tmp_path, vision=None, text=None, case=GOLDEN):
    """A model directory built from a golden case (model.json + npz + tokenizer); the first
    case by default."""
    config = json.loads((case / "golden.json").read_text())
    d = tmp_path / "model"
    d.mkdir()
    shutil.copy(case / config["vision"]["npz"], d / "vision.npz")
    shutil.copy(case / config["text"]["npz"], d / "text.npz")
    shutil.copy(case / config["text"].get("tokenizer", "tokenizer.model"), d / "tokenizer.model")
    vision_cfg = {**config["vision"], "npz": "vision.npz", **(vision or {})}
    text_cfg = {**config["text"], "npz": "text.npz", "tokenizer": "tokenizer.model", **(text or {})}
    (d / "model.json").write_text(json.dumps({"vision": vision_cfg, "text": text_cfg}))
    return d


def test_model_directory_loads_like_the_golden_case(tmp_path, golden):
    d = _model_dir(tmp_path, case=golden.dir)
    model = load_model(d)
    patch = golden.config["vision"]["patch_size"]
    images = torch.rand(2, 3, 2 * patch, 3 * patch)  # non-square
    with torch.no_grad():
        out = model.encode_image(images)
        assert out.patches.shape == (2, 2 * 3, golden.config["vision"]["embed_dim"])
        ref = golden.model().encode_image(images)
        torch.testing.assert_close(out.patches, ref.patches, rtol=0, atol=0)


def test_mismatched_keys_are_listed_in_one_error(tmp_path):
    d = _model_dir(tmp_path)
    arrays = read_npz(d / "vision.npz")
    arrays.pop("norm.bias")  # missing
    arrays["extra.weight"] = np.zeros(3, np.float32)  # unexpected
    arrays["cls_token"] = np.zeros((1, 1, 5), np.float32)  # wrong shape
    np.savez(d / "vision.npz", **arrays)
    with pytest.raises(CheckpointError) as info:
        load_model(d)
    message = str(info.value)
    assert str(d / "vision.npz") in message
    for key in ("norm.bias", "extra.weight", "cls_token"):
        assert key in message


def test_wrong_description_reports_shapes(tmp_path):
    d = _model_dir(tmp_path, vision={"depth": _vision()["depth"] + 1})
    with pytest.raises(CheckpointError, match="missing"):
        load_model(d)


def test_truncated_npz_is_named(tmp_path):
    d = _model_dir(tmp_path)
    data = (d / "text.npz").read_bytes()
    (d / "text.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="text.npz"):
        load_model(d)


def test_non_npz_file_is_named(tmp_path):
    d = _model_dir(tmp_path)
    (d / "vision.npz").write_text("<html>404 Not Found</html>")
    with pytest.raises(CheckpointError, match="vision.npz"):
        load_model(d)


def test_pickled_arrays_are_refused(tmp_path):
    d = _model_dir(tmp_path)
    arrays = read_npz(d / "vision.npz")
    arrays["norm.bias"] = np.array([object()], dtype=object)
    np.savez(d / "vision.npz", **arrays)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(d)


def test_missing_temperature_needs_one_from_the_description(tmp_path):
    d = _model_dir(tmp_path)
    arrays = read_npz(d / "text.npz")
    arrays.pop("temperature")
    np.savez(d / "text.npz", **arrays)
    with pytest.raises(CheckpointError, match="temperature"):
        load_model(d)
    description = json.loads((d / "model.json").read_text())
    (d / "model.json").write_text(json.dumps({**description, "temperature": 0.01}))
    assert load_model(d).temperature == 0.01


def test_bad_model_json(tmp_path):
    d = _model_dir(tmp_path)
    (d / "model.json").write_text('{"vision": {}}')
    with pytest.raises(ConfigError, match="model.json"):
        load_model(d)
    (d / "model.json").write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_model(d)


def test_not_a_model_directory(tmp_path):
    with pytest.raises(ConfigError, match="model.json"):
        load_model(tmp_path)
    with pytest.raises(KeyError, match="l14h"):
        load_model("no-such-model")


def test_inference_dtype(tmp_path):
    d = _model_dir(tmp_path)
    model32 = load_model(d)
    model16 = load_model(d, dtype=torch.bfloat16)
    side = 5 * _vision()["patch_size"]
    images = torch.rand(2, 3, side, side)
    with torch.no_grad():
        a = model32.encode_image(images).patches
        b = model16.encode_image(images).patches
    assert b.dtype == torch.float32  # outputs, norms and the residual stream stay fp32
    assert model16.vision.blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert model16.vision.blocks[0].norm1.weight.dtype == torch.float32
    assert model16.vision.pos_embed.dtype == torch.float32
    assert model16.text.token_embedding.weight.dtype == torch.float32
    assert 0 < float((a - b).abs().max()) < 0.05 * float(a.abs().max())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["vision", "text"])
def test_non_finite_weights_are_refused_naming_tensor_and_file(tmp_path, which, bad):
    d = _model_dir(tmp_path)
    arrays = read_npz(d / f"{which}.npz")
    key = sorted(k for k in arrays if k != "temperature" and arrays[k].size > 1)[0]
    arrays[key] = arrays[key].copy()
    arrays[key].flat[1] = bad
    np.savez(d / f"{which}.npz", **arrays)
    with pytest.raises(CheckpointError) as info:
        load_model(d)
    message = str(info.value)
    assert key in message and str(d / f"{which}.npz") in message and "NaN or infinite" in message


def test_weights_that_overflow_the_model_dtype_are_refused(tmp_path):
    d = _model_dir(tmp_path)
    arrays = read_npz(d / "vision.npz")
    arrays["norm.bias"] = arrays["norm.bias"].astype(np.float64)
    arrays["norm.bias"][0] = 1e300  # finite in the file, inf once cast to the model's fp32
    np.savez(d / "vision.npz", **arrays)
    with pytest.raises(CheckpointError, match="norm.bias"):
        load_model(d)


@pytest.mark.parametrize("bad", [np.nan, np.inf, 0.0, -0.01])
def test_temperature_in_the_checkpoint_must_be_finite_and_positive(tmp_path, bad):
    d = _model_dir(tmp_path)
    arrays = read_npz(d / "text.npz")
    arrays["temperature"] = np.asarray(bad, dtype=np.float32)
    np.savez(d / "text.npz", **arrays)
    with pytest.raises(CheckpointError, match="temperature must be a finite number > 0") as info:
        load_model(d)
    assert str(d / "text.npz") in str(info.value)


@pytest.mark.parametrize("bad", ["NaN", "Infinity", '"0.07"', "true"])
def test_temperature_in_the_description_must_be_a_finite_positive_number(tmp_path, bad):
    d = _model_dir(tmp_path)
    arrays = read_npz(d / "text.npz")
    arrays.pop("temperature")
    np.savez(d / "text.npz", **arrays)
    description = (d / "model.json").read_text()
    (d / "model.json").write_text(description[:-1] + f', "temperature": {bad}}}')
    with pytest.raises(CheckpointError, match="temperature") as info:
        load_model(d)
    assert str(d / "model.json") in str(info.value)


def test_a_model_built_in_memory_refuses_a_nan_temperature():
    config = json.loads((GOLDEN / "golden.json").read_text())
    vision = VisionConfig.from_dict(config["vision"], "golden vision")
    text = TextConfig.from_dict(config["text"], "golden text")
    with pytest.raises(CheckpointError, match="temperature"):
        TipsModel(vision, text, tokenizer=None, temperature=float("nan"))
