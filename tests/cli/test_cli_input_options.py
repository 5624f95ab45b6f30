"""``--max-pixels`` and ``--allow-outside-root`` end to end on the tiny model."""

from __future__ import annotations

import csv
import json
import logging
import shutil

import numpy as np
import pytest
from PIL import Image

from synthetic import mvtec_tree, tiny_model_dir
from tipsomaly.cli.main import main

SIZE = "70"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(tiny_model_dir(tmp_path_factory.mktemp("model")))


def _eval(model, *args):
    return main(
        ["eval", "-q", "--model", model, "--image-size", SIZE, "--pixel-prompts", "none"]
        + ["--device", "cpu", *map(str, args)]
    )


def test_max_pixels_turns_a_large_image_into_an_error_row(tmp_path, model):
    data = mvtec_tree(tmp_path / "ds", {"tile": (2, 0)}, size=48)  # 48×48 = 2304 px
    folder = data / "tile" / "test" / "good"
    args = ["predict", "-q", str(folder), "--model", model, "--image-size", SIZE]
    args += ["--class-name", "tile", "--no-overlays", "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "small"), "--max-pixels", "2000"]) == 3
    rows = list(csv.DictReader(open(tmp_path / "small" / "scores.csv", newline="")))
    assert [r["status"] for r in rows] == ["error", "error"]
    assert all("2,000" in r["error"] or "2000" in r["error"] for r in rows), rows[0]["error"]
    settings = json.loads((tmp_path / "small" / "scores.json").read_text())["settings"]
    assert settings["max_pixels"] == 2000
    # the limit just fits, and 'none' lifts it
    assert main([*args, "--out", str(tmp_path / "fits"), "--max-pixels", "2304"]) == 0
    assert main([*args, "--out", str(tmp_path / "none"), "--max-pixels", "none"]) == 0
    settings = json.loads((tmp_path / "none" / "scores.json").read_text())["settings"]
    assert settings["max_pixels"] is None
    # no process-wide limit is left behind: the next run has the default again
    assert main([*args, "--out", str(tmp_path / "again")]) == 0
    settings = json.loads((tmp_path / "again" / "scores.json").read_text())["settings"]
    assert settings["max_pixels"] == 100_000_000


@pytest.mark.parametrize("bad", ["-5", "1.5", "lots"])
def test_max_pixels_is_checked_when_parsed(tmp_path, model, bad, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["predict", str(tmp_path), "--class-name", "x", "--max-pixels", bad])
    assert exit_.value.code == 1
    assert "--max-pixels" in capsys.readouterr().err


def test_eval_refuses_paths_outside_the_root_unless_allowed(tmp_path, model, capsys):
    data = mvtec_tree(tmp_path / "ds", {"tile": (2, 2)}, size=48)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    meta = json.loads((data / "meta.json").read_text())
    first = meta["test"]["tile"][0]
    shutil.move(data / first["img_path"], outside / "moved.png")
    first["img_path"] = "../elsewhere/moved.png"
    (data / "meta.json").write_text(json.dumps(meta))

    assert _eval(model, "--data", data, "--out", tmp_path / "refused") == 1
    err = capsys.readouterr().err
    assert "moved.png" in err and "Traceback" not in err

    assert _eval(model, "--data", data, "--out", tmp_path / "ok", "--allow-outside-root") == 0
    result = json.loads((tmp_path / "ok" / "results.json").read_text())
    assert result["config"]["settings"]["allow_outside_root"] is True


def test_train_refuses_paths_outside_the_root_unless_allowed(tmp_path, model, capsys):
    data = mvtec_tree(tmp_path / "ds", {"tile": (1, 2)}, size=70)
    meta = json.loads((data / "meta.json").read_text())
    first = meta["test"]["tile"][0]
    (tmp_path / "elsewhere").mkdir()
    shutil.move(data / first["img_path"], tmp_path / "elsewhere" / "moved.png")
    first["img_path"] = "../elsewhere/moved.png"
    (data / "meta.json").write_text(json.dumps(meta))
    argv = ["train", "-q", "--data", str(data), "--model", model, "--image-size", SIZE]
    argv += ["--batch-size", "3", "--epochs", "1", "--n-prompt", "2", "--device", "cpu"]
    argv += ["--prompt-type", "object_agnostic"]

    assert main([*argv, "--out", str(tmp_path / "refused")]) == 1
    err = capsys.readouterr().err
    assert "moved.png" in err and "Traceback" not in err
    assert main([*argv, "--out", str(tmp_path / "ok"), "--allow-outside-root"]) == 0
    assert (tmp_path / "ok" / "prompts_epoch1.safetensors").is_file()


def test_train_leaves_out_an_image_over_max_pixels_with_a_warning(tmp_path, model, caplog):
    data = mvtec_tree(tmp_path / "ds", {"tile": (2, 2)}, size=70)  # 70×70 = 4,900 px
    meta = json.loads((data / "meta.json").read_text())
    big = data / meta["test"]["tile"][0]["img_path"]
    Image.fromarray(np.full((80, 80, 3), 128, np.uint8)).save(big)  # 6,400 px
    argv = ["train", "-q", "--data", str(data), "--model", model, "--image-size", SIZE]
    argv += ["--epochs", "1", "--n-prompt", "2", "--device", "cpu"]
    argv += ["--prompt-type", "object_agnostic"]
    for n, cache in enumerate(("memory", "none", str(tmp_path / "cache"))):
        caplog.clear()
        out = tmp_path / f"out{n}"
        with caplog.at_level(logging.WARNING, logger="tipsomaly"):
            assert (
                main([*argv, "--feature-cache", cache, "--max-pixels", "5000", "--out", str(out)])
                == 0
            )
        left_out = [r.getMessage() for r in caplog.records if str(big) in r.getMessage()]
        assert left_out and all("5,000" in m or "5000" in m for m in left_out), (cache, left_out)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tipsomaly"):
        assert main([*argv, "--out", str(tmp_path / "no-limit")]) == 0
    assert not [r for r in caplog.records if str(big) in r.getMessage()]


def test_train_holds_the_output_lock(tmp_path, model, capsys):
    from tipsomaly.runners.lock import OutputLock

    data = mvtec_tree(tmp_path / "ds", {"tile": (1, 2)}, size=70)
    out = tmp_path / "run"
    argv = ["train", "-q", "--data", str(data), "--model", model, "--image-size", SIZE]
    argv += ["--epochs", "1", "--n-prompt", "2", "--device", "cpu", "--out", str(out)]
    with OutputLock(out):  # another run (here: this process) writes into --out
        assert main(argv) == 1
    err = capsys.readouterr().err
    assert "in use" in err and str(out) in err
    assert not (out / "prompts_epoch1.safetensors").exists()
