"""Training stops at the first non-finite loss and keeps the last good prompts; a corrupt state
on resume is one error naming the file."""

from __future__ import annotations

import csv

import pytest
import torch

from synthetic import mvtec_tree, tiny_model_dir
from tipsomaly.method.pixel_prompts import PixelPrompts
from tipsomaly.runners import train as train_module
from tipsomaly.runners.train import TrainConfig, TrainError, train

SIZE = 70


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("train_nonfinite")
    return tiny_model_dir(base / "model"), mvtec_tree(base / "data", {"bottle": (2, 3)}, size=SIZE)


def _config(setup, out, **kw) -> TrainConfig:
    model, data = setup
    settings = {
        "model": str(model),
        "image_size": SIZE,
        "batch_size": 2,  # 5 images: 3 steps per epoch
        "epochs": 2,
        "n_prompt": 2,
        "prompt_type": "object_agnostic",
        "device": "cpu",
        "progress": False,
        **kw,
    }
    return TrainConfig(data=data, out=out, **settings)


def nan_loss_from_call(monkeypatch, first_bad: int) -> None:
    """From the ``first_bad``-th step on (1-based), the loss is NaN (gradients too)."""
    real = train_module.pixel_prompt_losses
    calls = {"n": 0}

    def losses(*args, **kwargs):
        calls["n"] += 1
        terms = real(*args, **kwargs)
        if calls["n"] >= first_bad:
            return terms._replace(total=terms.total * float("nan"))
        return terms

    monkeypatch.setattr(train_module, "pixel_prompt_losses", losses)


def test_a_nan_loss_stops_training_and_keeps_the_last_good_prompts(setup, tmp_path, monkeypatch):
    out = tmp_path / "run"
    nan_loss_from_call(monkeypatch, first_bad=5)  # 2nd step of epoch 2
    with pytest.raises(TrainError) as info:
        train(_config(setup, out))
    message = str(info.value)
    assert "epoch 2, step 5" in message and "nan" in message
    assert str(out / "prompts_epoch1.safetensors") in message
    assert not (out / "prompts_epoch2.safetensors").exists()
    assert not (out / "train_state_epoch2.safetensors").exists()
    kept = PixelPrompts.load(out / "prompts_epoch1.safetensors")
    assert bool(torch.isfinite(kept.preambles).all())


def test_a_nan_loss_in_the_first_step_writes_no_prompts(setup, tmp_path, monkeypatch):
    out = tmp_path / "run"
    nan_loss_from_call(monkeypatch, first_bad=1)
    with pytest.raises(TrainError, match="no prompts were written"):
        train(_config(setup, out))
    assert not list(out.glob("prompts_epoch*"))


def test_prompts_turning_non_finite_stop_training(setup, tmp_path, monkeypatch):
    # A finite loss whose step makes the prompts inf (e.g. an overflowing gradient).
    real_step = torch.optim.Adam.step

    def step(self, *args, **kwargs):
        result = real_step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0][0, 0, 0] = float("inf")
        return result

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    with pytest.raises(TrainError, match="prompts became NaN or infinite"):
        train(_config(setup, tmp_path / "run", epochs=1))
    assert not list((tmp_path / "run").glob("prompts_epoch*"))


# -- resume ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_epoch(setup, tmp_path_factory):
    out = tmp_path_factory.mktemp("one_epoch") / "run"
    train(_config(setup, out, epochs=1))
    return out


def _copy_run(one_epoch, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for f in one_epoch.iterdir():
        (out / f.name).write_bytes(f.read_bytes())
    return out


def _damage_state(path, how):
    from safetensors.torch import load_file, save_file

    if how == "truncated":
        path.write_bytes(path.read_bytes()[:100])
    elif how == "garbage":
        path.write_bytes(b"not a safetensors file at all")
    else:
        tensors = load_file(str(path))
        if how == "wrong-shape":
            tensors["adam.exp_avg"] = torch.zeros(3, 3)
        elif how == "nan-moments":
            tensors["adam.exp_avg_sq"] = torch.full_like(tensors["adam.exp_avg_sq"], float("nan"))
        elif how == "missing":
            del tensors["generator"]
        elif how == "bad-generator":
            tensors["generator"] = torch.zeros(7, dtype=torch.uint8)
        elif how == "bad-step":
            tensors["adam.step"] = torch.tensor([-2.5])
        save_file(tensors, str(path))


@pytest.mark.parametrize(
    "how",
    ["truncated", "garbage", "wrong-shape", "nan-moments", "missing", "bad-generator", "bad-step"],
)
def test_a_corrupt_train_state_is_one_error_naming_the_file(setup, one_epoch, tmp_path, how):
    out = _copy_run(one_epoch, tmp_path)
    state = out / "train_state_epoch1.safetensors"
    _damage_state(state, how)
    with pytest.raises(TrainError) as info:
        train(_config(setup, out, resume=True))
    message = str(info.value)
    assert str(state) in message and "\n" not in message


@pytest.mark.parametrize("how", ["garbage", "nan", "other-shape"])
def test_corrupt_prompts_on_resume_are_one_error_naming_the_file(setup, one_epoch, tmp_path, how):
    out = _copy_run(one_epoch, tmp_path)
    prompts = out / "prompts_epoch1.safetensors"
    if how == "garbage":
        prompts.write_bytes(b"\x00" * 64)
    else:
        from safetensors.torch import save_file

        bad = torch.zeros(2, 2, 64) if how == "nan" else torch.zeros(2, 5, 64)
        if how == "nan":
            bad[0, 0, 0] = float("nan")
        save_file({"preambles": bad}, str(prompts))
    with pytest.raises(TrainError) as info:
        train(_config(setup, out, resume=True))
    assert str(prompts) in str(info.value)


@pytest.mark.parametrize("content", ["{truncated", "[1, 2]", "\udcff"])
def test_a_corrupt_train_config_on_resume_names_the_file(setup, one_epoch, tmp_path, content):
    out = _copy_run(one_epoch, tmp_path)
    config = out / "train_config.json"
    config.write_bytes(content.encode("utf-8", "surrogateescape"))
    with pytest.raises(TrainError) as info:
        train(_config(setup, out, resume=True))
    assert str(config) in str(info.value)


def test_a_torn_train_log_does_not_stop_a_resume(setup, one_epoch, tmp_path):
    out = _copy_run(one_epoch, tmp_path)
    log = out / "train_log.csv"
    log.write_text(log.read_text() + "step,2,x\n\x00garbage,,,\n")
    result = train(_config(setup, out, resume=True))
    assert len(result.epoch_losses) == 1
    with log.open(newline="") as f:  # rewritten from the rows of the kept epoch
        rows = list(csv.DictReader(f))
    assert [(r["kind"], r["epoch"]) for r in rows if r["kind"] == "epoch"] == [
        ("epoch", "1"),
        ("epoch", "2"),
    ]
    assert all(r["kind"] in ("step", "epoch") for r in rows)
