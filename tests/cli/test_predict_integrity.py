"""``predict`` never leaves a torn or stale output folder: one writer at a time (real processes),
SIGKILL leaves ``complete: false`` and no overlay without its row, per-image write failures
become error rows, a full disk is one ``cannot write`` line, odd names and non-finite scores do
not stop the batch."""

from __future__ import annotations

import csv
import errno
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthetic import tiny_model_dir
from tipsomaly.cli.main import main
from tipsomaly.method.detector import Detector
from tipsomaly.runners import image_outputs as predict_module

SIZE = 70


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("model"))


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


def _argv(model_dir: Path, images: Path, out: Path, *extra: str) -> list[str]:
    return [
        "predict",
        str(images),
        "--class-name",
        "nut",
        "--model",
        str(model_dir),
        "--image-size",
        str(SIZE),
        "--out",
        str(out),
        "--batch-size",
        "1",
        "-q",
        *extra,
    ]


def _rows(out: Path) -> list[dict[str, str]]:
    with open(out / "scores.csv", newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# The first run, in its own process: it scores the first image, writes its row and files, then
# blocks in the network on the second image until killed.
BLOCKED_RUN = textwrap.dedent(
    """
    import sys, time
    from tipsomaly.cli.main import main
    from tipsomaly.method.detector import Detector
    original, calls = Detector.score_batch, [0]
    def score_batch(self, images, class_names):
        calls[0] += 1
        if calls[0] == 2:
            print("blocked", flush=True)
            time.sleep(300)
        return original(self, images, class_names)
    Detector.score_batch = score_batch
    sys.exit(main(sys.argv[1:]))
    """
)


def test_second_run_refused_and_sigkill_leaves_an_incomplete_untorn_folder(
    model_dir, images, tmp_path, caplog
):
    out = tmp_path / "out"
    argv = _argv(model_dir, images, out, "--save-maps", "--threshold", "0.5")
    assert main(argv) == 0  # an earlier, complete run into the same folder
    assert json.loads((out / "scores.json").read_text())["complete"] is True

    first = subprocess.Popen(
        [sys.executable, "-c", BLOCKED_RUN, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert first.stdout.readline().strip() == "blocked"
        second = subprocess.run(
            [sys.executable, "-m", "tipsomaly", *argv],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert second.returncode != 0
        err = second.stderr.strip()
        assert err.startswith("tipsomaly: error:") and len(err.splitlines()) == 1, err
        assert f"pid {first.pid}" in err and str(out) in err and "predict" in err
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()

    # killed after its first row: the earlier run's "complete: true" is gone
    assert json.loads((out / "scores.json").read_text())["complete"] is False
    rows = _rows(out)
    assert [Path(r["path"]).name for r in rows] == ["0.png"]
    named = {r["name"] for r in rows}
    for folder, suffix in (("overlays", ".png"), ("masks", ".png"), ("maps", ".npy")):
        files = {p.name.removesuffix(suffix) for p in (out / folder).iterdir()}
        assert files <= named, (folder, files)  # no file without its row
    assert (out / "overlays" / "0.png").is_file()

    with caplog.at_level(logging.WARNING):
        assert main(argv) == 0  # the dead run's lock is stale: taken over
    assert f"pid {first.pid}" in caplog.text and "stale" in caplog.text
    assert json.loads((out / "scores.json").read_text())["complete"] is True
    assert len(_rows(out)) == 3
    assert not list(out.rglob(".*.tmp*")) and not (out / ".tipsomaly.lock").exists()


def test_out_of_memory_on_one_overlay_is_that_images_error_row(
    model_dir, images, tmp_path, monkeypatch
):
    original, calls = predict_module.save_overlay, []

    def save_overlay(path, image, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:  # the second image's overlay
            raise MemoryError
        return original(path, image, *args, **kwargs)

    monkeypatch.setattr(predict_module, "save_overlay", save_overlay)
    out = tmp_path / "out"
    assert main(_argv(model_dir, images, out, "--save-maps")) == 3
    rows = {Path(r["path"]).name: r for r in _rows(out)}
    assert [r["status"] for r in rows.values()] == ["ok", "error", "ok"]
    assert "out of memory" in rows["1.png"]["error"] and rows["1.png"]["image_score"] == ""
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["0.png", "2.png"]
    assert sorted(p.name for p in (out / "maps").iterdir()) == ["0.npy", "2.npy"]


def test_a_full_disk_is_one_line_and_keeps_the_rows_written(
    model_dir, images, tmp_path, monkeypatch, capsys
):
    original = predict_module.save_overlay
    calls = []

    def save_overlay(path, *args, **kwargs):
        calls.append(path)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(path, *args, **kwargs)

    monkeypatch.setattr(predict_module, "save_overlay", save_overlay)
    out = tmp_path / "out"
    assert main(_argv(model_dir, images, out)) == 1
    err = capsys.readouterr().err.strip()
    assert err == f"tipsomaly: error: cannot write {out / 'overlays' / '1.png'}: " + (
        "No space left on device"
    )
    assert [Path(r["path"]).name for r in _rows(out)] == ["0.png"]
    assert json.loads((out / "scores.json").read_text())["complete"] is False
    assert [p.name for p in (out / "overlays").iterdir()] == ["0.png"]


def test_a_non_finite_score_is_an_error_row(model_dir, images, tmp_path, monkeypatch):
    original, calls = Detector.score_batch, []

    def score_batch(self, images, class_names):
        scores = original(self, images, class_names)
        calls.append(1)
        if len(calls) == 2:
            scores.score_cls1[:] = torch.nan
        return scores

    monkeypatch.setattr(Detector, "score_batch", score_batch)
    out = tmp_path / "out"
    assert main(_argv(model_dir, images, out)) == 3
    rows = _rows(out)
    assert [r["status"] for r in rows] == ["ok", "error", "ok"]
    assert rows[1]["error"].startswith("cannot score image") and "non-finite" in rows[1]["error"]
    assert not (out / "overlays" / "1.png").exists()


def test_a_file_name_with_undecodable_bytes_is_scored_and_escaped(model_dir, images, tmp_path):
    odd = images / os.fsdecode(b"caf\xff.png")
    Image.fromarray(np.full((20, 20, 3), 90, np.uint8)).save(odd)
    out = tmp_path / "out"
    assert main(_argv(model_dir, images, out)) == 0
    raw = (out / "scores.csv").read_bytes()
    assert b"\r\n" not in raw
    text = raw.decode("utf-8")  # valid UTF-8
    assert "caf\\xff.png" in text
    doc = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert any(r["path"].endswith("caf\\xff.png") for r in doc["results"])
    assert os.path.exists(out / "overlays" / os.fsdecode(b"caf\xff.png"))
