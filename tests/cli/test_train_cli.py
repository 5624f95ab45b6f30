"""``tipsomaly train`` end to end on a generated dataset with the tiny golden model."""

from __future__ import annotations

import csv

import pytest
import torch

from synthetic import mvtec_tree, tiny_model_dir, tiny_vision
from tipsomaly.cli.main import main
from tipsomaly.method.pixel_prompts import PixelPrompts


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("train_cli")
    model = tiny_model_dir(base / "model")
    data = mvtec_tree(base / "data", {"bottle": (2, 3), "wood_grain": (1, 2)}, size=70)
    return model, data


def _argv(setup, out, *extra):
    model, data = setup
    return [
        "train",
        "--data", str(data),
        "--out", str(out),
        "--model", str(model),
        "--image-size", str(5 * tiny_vision()["patch_size"]),
        "--batch-size", "3",
        "--prompt-type", "object_agnostic",
        "--device", "cpu",
        "-q",
        *extra,
    ]  # fmt: skip


def test_train_resume_and_evaluate(setup, tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = tmp_path / "run"
        cache = tmp_path / "features"
        common = ["--feature-cache", str(cache), "--cache-dtype", "fp16", "--n-prompt", "4"]
        assert main(_argv(setup, out, "--epochs", "1", *common)) == 0
        assert capsys.readouterr().out.strip() == str(out / "prompts_epoch1.safetensors")

        # continuing with more epochs, evaluating on a held-out set after each
        argv = _argv(setup, out, "--epochs", "2", "--resume", "--eval-data", str(setup[1]))
        assert main([*argv, *common]) == 0
        last = out / "prompts_epoch2.safetensors"
        assert capsys.readouterr().out.strip() == str(last)
        prompts = PixelPrompts.load(last)
        assert prompts.preambles.shape == (2, 4, tiny_vision()["embed_dim"])
        assert prompts.metadata["cache_dtype"] == "fp16"
        assert prompts.metadata["epochs_done"] == "2"
        assert prompts.metadata["train_images"] == "8"
        rows = list(csv.DictReader((out / "train_log.csv").open()))
        epochs = [r for r in rows if r["kind"] == "epoch"]
        assert [r["pixel_auroc"] == "" for r in epochs] == [True, False]
        assert len([r for r in rows if r["kind"] == "step"]) == 2 * 3
        assert any(cache.iterdir())

        # without --resume the used directory is refused, with a message and status 1
        assert main(_argv(setup, out, *common)) == 1
        assert "--resume" in capsys.readouterr().err
    finally:
        torch.set_num_threads(threads)


def test_bad_data_is_a_message_not_a_traceback(setup, tmp_path, capsys):
    assert main(_argv(setup, tmp_path / "out", "--classes", "no_such_class")) == 1
    assert "no_such_class" in capsys.readouterr().err


def test_a_nan_loss_exits_non_zero_with_one_line(setup, tmp_path, capsys, monkeypatch):
    from tipsomaly.runners import train as train_module

    real = train_module.pixel_prompt_losses

    def nan_losses(*args, **kwargs):
        terms = real(*args, **kwargs)
        return terms._replace(total=terms.total * float("nan"))

    monkeypatch.setattr(train_module, "pixel_prompt_losses", nan_losses)
    out = tmp_path / "out"
    assert main(_argv(setup, out, "--epochs", "1", "--n-prompt", "2")) == 1
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("tipsomaly: error: training stopped") and "\n" not in err
    assert captured.out == "" and not list(out.glob("prompts_epoch*"))


def test_a_corrupt_train_state_on_resume_is_one_line(setup, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_argv(setup, out, "--epochs", "1", "--n-prompt", "2")) == 0
    state = out / "train_state_epoch1.safetensors"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    capsys.readouterr()
    assert main(_argv(setup, out, "--epochs", "2", "--n-prompt", "2", "--resume")) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tipsomaly: error: cannot resume") and "\n" not in err
    assert str(state) in err
