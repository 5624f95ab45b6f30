"""Training the pixel prompts on a generated dataset with the tiny golden model."""

from __future__ import annotations

import csv
import dataclasses
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

from synthetic import mvtec_tree, tiny_model_dir, tiny_vision
from tipsomaly.data.meta import read_meta
from tipsomaly.method.detector import Detector
from tipsomaly.method.pixel_prompts import PixelPrompts
from tipsomaly.runners import train as train_module
from tipsomaly.runners.features import DiskFeatures, MemoryFeatures, build_features
from tipsomaly.runners.train import TrainConfig, TrainError, train
from tipsomaly.tips.model import load_model

CLASSES = {"bottle": (2, 3), "wood_grain": (2, 3)}  # 10 images, 6 with drawn defects
PATCH, WIDTH = tiny_vision()["patch_size"], tiny_vision()["embed_dim"]
SIZE = 5 * PATCH  # a 5x5 patch grid
FAST_PROMPTS = "object_agnostic"  # one sentence per state: fast steps (the golden test covers
# the full industrial ensembles)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is faster and immune to other processes on the machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("train")
    return tiny_model_dir(base / "model"), mvtec_tree(base / "data", CLASSES, size=SIZE)


def _config(setup, out, **kw) -> TrainConfig:
    model, data = setup
    settings = {
        "model": str(model),
        "image_size": SIZE,
        "batch_size": 4,
        "epochs": 2,
        "prompt_type": FAST_PROMPTS,
        "device": "cpu",
        "progress": False,
        **kw,
    }
    return TrainConfig(data=data, out=out, **settings)


def _files(out) -> dict[str, tuple[dict, dict[str, bytes]]]:
    """Every safetensors file of a run: its metadata and the raw bytes of each tensor.

    (The files' bytes themselves are not comparable: safetensors writes the metadata entries
    in hash-map order.)
    """
    from safetensors import safe_open

    contents = {}
    for path in sorted(out.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k).numpy().tobytes() for k in f.keys()}
            contents[path.name] = (f.metadata(), tensors)
    return contents


@pytest.fixture(scope="module")
def reference(setup, tmp_path_factory):
    """An uninterrupted 2-epoch run with the paper's settings but the tiny model and data."""
    out = tmp_path_factory.mktemp("reference")
    return train(_config(setup, out))


def test_training_lowers_the_loss_and_logs_every_step(setup, tmp_path):
    result = train(_config(setup, tmp_path, epochs=3, eval_data=setup[1]))
    totals = [e["total"] for e in result.epoch_losses]
    assert totals[-1] < totals[0]
    for e in result.epoch_losses:
        assert e["total"] == pytest.approx(e["focal"] + e["dice_abnormal"] + e["dice_normal"])
    rows = list(csv.DictReader((tmp_path / "train_log.csv").open()))
    steps = [r for r in rows if r["kind"] == "step"]
    epochs = [r for r in rows if r["kind"] == "epoch"]
    assert len(steps) == 3 * 3 and [int(r["step"]) for r in steps] == list(range(1, 10))
    assert [int(r["epoch"]) for r in epochs] == [1, 2, 3]
    assert sum(int(r["images"]) for r in steps[:3]) == 10
    for row, means in zip(epochs, result.epoch_losses, strict=True):
        assert float(row["total"]) == means["total"]
        assert 0.0 <= float(row["pixel_auroc"]) <= 1.0
        assert 0.0 <= float(row["pixel_aupro"]) <= 1.0
    assert [m["pixel_auroc"] for m in result.eval_metrics] == [
        float(r["pixel_auroc"]) for r in epochs
    ]
    assert set(result.eval_metrics[0]) >= {"bottle/pixel_auroc", "wood_grain/pixel_aupro"}


def test_checkpoints_carry_metadata_and_work_in_the_detector(setup, reference):
    model_dir, data = setup
    assert [p.name for p in reference.checkpoints] == [
        "prompts_epoch1.safetensors",
        "prompts_epoch2.safetensors",
    ]
    prompts = PixelPrompts.load(reference.last_checkpoint)
    assert prompts.preambles.shape == (2, 8, WIDTH)
    assert torch.equal(prompts.preambles, reference.prompts.preambles)
    meta = prompts.metadata
    expected = {
        "width": str(WIDTH),
        "n_prompt": "8",
        "prompt_type": FAST_PROMPTS,
        "prompt_method": "concat",
        "train_images": "10",
        "epochs_done": "2",
        "epochs_total": "2",
        "batch_size": "4",
        "seed": "111",
        "image_size": str(SIZE),
        "lr": "0.001",
        "betas": "0.5,0.999",
        "final_loss": repr(reference.epoch_losses[-1]["total"]),
    }
    assert {k: meta.get(k) for k in expected} == expected
    assert meta["backbone"] == "model" and meta["tipsomaly_version"]
    assert meta["train_data"] == str(data.resolve())
    assert "bottle" in meta["train_classes"] and "wood_grain" in meta["train_classes"]

    model = load_model(model_dir)
    image = data / "bottle" / "test" / "scratch" / "000.png"
    trained = Detector(model, pixel_prompts=reference.last_checkpoint, image_size=SIZE)
    (pred,) = trained.predict(image, "bottle")
    assert pred.anomaly_map.shape == (SIZE, SIZE) and np.isfinite(pred.anomaly_map).all()
    (untrained,) = Detector(model, image_size=SIZE).predict(image, "bottle")
    assert not np.allclose(pred.anomaly_map, untrained.anomaly_map)


def test_same_seed_gives_bitwise_identical_checkpoints(setup, reference, tmp_path):
    again = train(_config(setup, tmp_path / "again"))
    assert again.epoch_losses == reference.epoch_losses
    assert _files(tmp_path / "again") == _files(reference.out)
    # features read back from an on-disk cache are the same numbers: the same run again
    cache = tmp_path / "cache"
    train(_config(setup, tmp_path / "disk", feature_cache=cache))
    assert _files(tmp_path / "disk") == _files(reference.out)
    other_seed = train(_config(setup, tmp_path / "seed", seed=7, epochs=1))
    assert not torch.equal(other_seed.prompts.preambles, reference.prompts.preambles)


def test_resume_after_a_crash_equals_an_uninterrupted_run(setup, reference, tmp_path, monkeypatch):
    out = tmp_path / "crashed"
    real = train_module.pixel_prompt_losses
    calls = {"n": 0}

    def crash_in_epoch_two(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 1 has 3 steps: this is the 2nd step of epoch 2
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(train_module, "pixel_prompt_losses", crash_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        train(_config(setup, out))
    monkeypatch.setattr(train_module, "pixel_prompt_losses", real)
    assert sorted(_files(out)) == ["prompts_epoch1.safetensors", "train_state_epoch1.safetensors"]

    resumed = train(_config(setup, out, resume=True))
    assert len(resumed.epoch_losses) == 1 and resumed.epoch_losses == reference.epoch_losses[1:]
    assert _files(out) == _files(reference.out)
    # the log of the cut epoch is dropped, so the whole log equals the uninterrupted one
    assert (out / "train_log.csv").read_text() == (reference.out / "train_log.csv").read_text()
    assert [p.name for p in resumed.checkpoints] == [p.name for p in reference.checkpoints]

    # epochs may grow on resume; a run that is complete does nothing
    done = train(_config(setup, out, resume=True))
    assert done.epoch_losses == [] and done.last_checkpoint == out / "prompts_epoch2.safetensors"


def test_resume_refuses_other_settings_and_fresh_runs_refuse_a_used_directory(
    setup, reference, tmp_path
):
    out = tmp_path / "run"
    train(_config(setup, out, epochs=1))
    with pytest.raises(TrainError, match="lr"):
        train(_config(setup, out, epochs=2, resume=True, lr=1e-2))
    with pytest.raises(TrainError, match="already holds"):
        train(_config(setup, out, epochs=2))
    with pytest.raises(TrainError, match="epochs"):
        train(_config(setup, tmp_path / "bad", epochs=0))


def test_disk_cache_is_reused_and_follows_file_changes(setup, tmp_path, monkeypatch):
    model_dir, data = setup
    model = load_model(model_dir)
    samples = read_meta(data).all_samples()
    memory = build_features(model, samples, SIZE, progress=False)
    disk = build_features(model, samples, SIZE, cache=tmp_path, progress=False)
    assert isinstance(memory, MemoryFeatures) and isinstance(disk, DiskFeatures)
    rows = [0, 5, 9]
    for got, want in zip(disk.get(rows), memory.get(rows), strict=True):
        assert torch.equal(got, want)
    patches, masks = memory.get(rows)
    assert patches.shape == (3, (SIZE // PATCH) ** 2, WIDTH) and masks.dtype == torch.bool
    assert masks.shape == (3, SIZE, SIZE) and masks.any()
    (folder,) = tmp_path.iterdir()
    assert f"-s{SIZE}-" in folder.name and "cache_fp32" in folder.name
    assert len(list(folder.glob("*.safetensors"))) == len(samples)

    # a second build reads the files: the backbone does not run, except for a changed image
    encoded = []
    real = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda x: encoded.append(len(x)) or real(x))
    build_features(model, samples, SIZE, cache=tmp_path, progress=False)
    assert encoded == []
    # files are known by their bytes: a touched file is not recomputed, an edited one is
    image = samples[3].image_path
    st = image.stat()
    os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    build_features(model, samples, SIZE, cache=tmp_path, progress=False)
    assert encoded == []
    original = image.read_bytes()
    try:
        with Image.open(image) as im:
            pixels = np.array(im)
        pixels[0, 0] ^= 1
        Image.fromarray(pixels).save(image)
        os.utime(image, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime, new content
        build_features(model, samples, SIZE, cache=tmp_path, progress=False)
        assert encoded == [1]
    finally:
        image.write_bytes(original)

    half = build_features(model, samples, SIZE, cache_dtype="fp16", progress=False)
    assert half.get(rows)[0].dtype == torch.float16
    torch.testing.assert_close(half.get(rows)[0].float(), patches, atol=1e-2, rtol=1e-2)


def test_disk_cache_leaves_out_an_unreadable_image_with_a_warning(setup, tmp_path, caplog):
    model_dir, data = setup
    model = load_model(model_dir)
    samples = read_meta(data).all_samples()
    gone = dataclasses.replace(samples[0], image_path=tmp_path / "missing.png")
    with caplog.at_level(logging.WARNING, logger="tipsomaly.runners.features"):
        disk = build_features(model, [gone, *samples[1:]], SIZE, cache=tmp_path, progress=False)
    assert disk.samples == samples[1:]
    assert "missing.png" in caplog.text


def test_live_features_match_the_cache(setup):
    model_dir, data = setup
    model = load_model(model_dir)
    samples = read_meta(data).all_samples()[:4]
    live = build_features(model, samples, SIZE, cache="none", progress=False)
    memory = build_features(model, samples, SIZE, progress=False)
    got, want = live.get([1, 2]), memory.get([1, 2])
    torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
    assert torch.equal(got[1], want[1])


def test_disk_cache_files_of_another_dtype_are_recomputed_and_damage_is_named(
    setup, tmp_path, monkeypatch
):
    from safetensors.torch import load_file, save_file

    from tipsomaly.runners.features import FeatureCacheError

    model_dir, data = setup
    model = load_model(model_dir)
    samples = read_meta(data).all_samples()[:3]
    disk = build_features(model, samples, SIZE, cache=tmp_path, progress=False)
    path = disk.files[1]
    tensors = load_file(str(path))
    save_file({"patches": tensors["patches"].double(), "mask": tensors["mask"]}, str(path))

    encoded = []
    real = model.encode_image
    monkeypatch.setattr(model, "encode_image", lambda x: encoded.append(len(x)) or real(x))
    again = build_features(model, samples, SIZE, cache=tmp_path, progress=False)
    assert encoded == [1] and again.get([1])[0].dtype == torch.float32

    path.write_bytes(b"damaged after the check")
    with pytest.raises(FeatureCacheError, match=path.name):
        again.get([0, 1])
