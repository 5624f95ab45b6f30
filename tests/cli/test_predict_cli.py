"""``tipsomaly predict`` end to end on the golden tiny model, and the runner behind it."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from goldens import golden_dirs
from tipsomaly.cli.main import main
from tipsomaly.method.config import resolve_pixel_prompts
from tipsomaly.method.detector import Detector
from tipsomaly.runners.predict import (
    NoInputsError,
    expand_inputs,
    output_names,
    run_predict,
)
from tipsomaly.tips.model import load_model_dir

GOLDEN = golden_dirs()[0]
SIZE = 70  # the golden pipeline's image size: fast on CPU


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A model directory (model.json + npz + tokenizer) holding the golden tiny model."""
    config = json.loads((GOLDEN / "golden.json").read_text())
    d = tmp_path_factory.mktemp("model")
    shutil.copy(GOLDEN / config["vision"]["npz"], d / "vision.npz")
    shutil.copy(GOLDEN / config["text"]["npz"], d / "text.npz")
    shutil.copy(GOLDEN / config["text"].get("tokenizer", "tokenizer.model"), d / "tokenizer.model")
    vision = {**config["vision"], "npz": "vision.npz"}
    text = {**config["text"], "npz": "text.npz", "tokenizer": "tokenizer.model"}
    (d / "model.json").write_text(json.dumps({"vision": vision, "text": text}))
    return d


@pytest.fixture(scope="module")
def sigma() -> float:
    pipeline = json.loads((GOLDEN / "golden.json").read_text())["pipeline"]
    return float(pipeline["sigma"]) if isinstance(pipeline, dict) else 4.0


def _noise(h: int, w: int, channels: int | None = 3, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (h, w) if channels is None else (h, w, channels)
    return rng.integers(60, 200, shape).astype(np.uint8)


def _save(path: Path, arr: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path) if mode else Image.fromarray(arr).save(path)
    return path


GOOD = {  # relative path -> (height, width)
    "rgb.png": (50, 80),
    "grey.png": (64, 48),
    "rgba.png": (40, 40),
    "sixteen.png": (33, 57),
    "a/same.png": (45, 60),
    "b/same.png": (30, 70),
    "photo.jpg": (56, 56),
}
BAD = ["truncated.png", "empty.png", "text.png"]


@pytest.fixture
def images(tmp_path) -> Path:
    """A folder with good images of every kind and three unreadable ones."""
    root = tmp_path / "images"
    _save(root / "rgb.png", _noise(50, 80))
    _save(root / "grey.png", _noise(64, 48, None), "L")
    _save(root / "rgba.png", np.dstack([_noise(40, 40), np.full((40, 40), 128, np.uint8)]))
    sixteen = (np.random.default_rng(1).integers(0, 65535, (33, 57))).astype(np.uint16)
    Image.fromarray(sixteen).save(root / "sixteen.png")  # 16-bit grey PNG (mode I;16)
    _save(root / "a" / "same.png", _noise(45, 60, seed=2))
    _save(root / "b" / "same.png", _noise(30, 70, seed=3))
    _save(root / "photo.jpg", _noise(56, 56, seed=4))
    full = _save(tmp_path / "full.png", _noise(60, 60, seed=5)).read_bytes()
    (root / "truncated.png").write_bytes(full[: len(full) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "text.png").write_text("this is not a picture\n")
    (root / "notes.txt").write_text("not an image: skipped by the folder scan\n")
    with Image.open(root / "sixteen.png") as im:
        assert im.mode.startswith("I;16")
    return root


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Run in tmp_path, so the default --out (tipsomaly-out) never lands in the repository."""
    monkeypatch.chdir(tmp_path)


def _predict(model_dir: Path, *args: str, sigma: float = 4.0) -> int:
    base = ["predict", *args, "--model", str(model_dir), "--image-size", str(SIZE)]
    return main([*base, "--sigma", str(sigma), "-q"])


def _rows(out: Path) -> dict[str, dict[str, str]]:
    """scores.csv of ``out`` by path relative to the sibling ``images`` folder."""
    root = out.parent / "images"
    with open(out / "scores.csv", newline="") as fh:
        return {Path(r["path"]).relative_to(root).as_posix(): r for r in csv.DictReader(fh)}


# -- end to end -------------------------------------------------------------------------------
def test_end_to_end_good_bad_and_same_names(model_dir, images, tmp_path, capsys, sigma):
    out = tmp_path / "out"
    missing = images / "missing.png"
    args = [str(images), str(missing), "--class-name", "hazelnut", "--out", str(out)]
    rc = _predict(model_dir, *args, sigma=sigma)
    assert rc == 3
    stdout = capsys.readouterr().out
    assert f"{len(GOOD) + len(BAD) + 1} image(s): {len(GOOD)} ok, {len(BAD) + 1} failed" in stdout

    rows = _rows(out)
    assert set(rows) == set(GOOD) | set(BAD) | {"missing.png"}  # notes.txt is not an image
    for rel, (h, w) in GOOD.items():
        row = rows[rel]
        assert row["status"] == "ok" and row["error"] == "", rel
        assert row["class_name"] == "hazelnut"
        score = float(row["image_score"])
        assert 0.0 <= score <= 2.0 and score == float(row["score_cls1"])
        overlay = out / "overlays" / f"{row['name']}.png"
        with Image.open(overlay) as im:
            assert im.size == (w, h) and im.mode == "RGB", rel
    for rel in [*BAD, "missing.png"]:
        row = rows[rel]
        assert row["status"] == "error" and row["image_score"] == ""
        assert rel in row["error"]
        assert not (out / "overlays" / f"{row['name']}.png").exists()
    assert "empty file" in rows["empty.png"]["error"]
    assert "not a recognised image format" in rows["text.png"]["error"]
    assert "truncated or corrupt" in rows["truncated.png"]["error"]
    assert "file not found" in rows["missing.png"]["error"]
    # same file name in two folders: the outputs mirror the folders
    assert rows["a/same.png"]["name"] == "a/same" and rows["b/same.png"]["name"] == "b/same"
    assert (out / "overlays" / "a" / "same.png").is_file()
    assert (out / "overlays" / "b" / "same.png").is_file()

    doc = json.loads((out / "scores.json").read_text())
    assert doc["complete"] is True
    assert doc["summary"] == {"images": len(rows), "ok": len(GOOD), "failed": len(BAD) + 1}
    assert doc["settings"]["image_size"] == SIZE and doc["settings"]["pixel_prompts"] is None
    by_path = {r["path"]: r for r in doc["results"]}
    assert by_path[str(images / "text.png")]["image_score"] is None
    assert len(doc["results"]) == len(rows)


def test_all_ok_exits_0_and_folder_order_is_sorted(model_dir, tmp_path, capsys):
    root = tmp_path / "images"
    for name in ("c.png", "a.png", "sub/b.png"):
        _save(root / name, _noise(30, 30))
    out = tmp_path / "out"
    assert _predict(model_dir, str(root), "--class-name", "nut", "--out", str(out)) == 0
    assert list(_rows(out)) == ["a.png", "c.png", "sub/b.png"]
    assert "3 image(s): 3 ok, 0 failed" in capsys.readouterr().out


def test_glob_patterns_are_expanded(model_dir, tmp_path):
    root = tmp_path / "images"
    for name in ("x1.png", "x2.png", "y.png", "deep/x3.png", "deep/z.jpg"):
        _save(root / name, _noise(28, 28))
    out = tmp_path / "out"
    pattern = str(root / "**" / "x*.png")
    assert _predict(model_dir, pattern, "--class-name", "nut", "--out", str(out)) == 0
    assert sorted(_rows(out)) == ["deep/x3.png", "x1.png", "x2.png"]


def test_no_input_images_exits_2(model_dir, tmp_path, capsys):
    empty = tmp_path / "images"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here")
    args = [str(empty), str(tmp_path / "nothing-*.png"), "--class-name", "nut"]
    rc = _predict(model_dir, *args, "--out", str(tmp_path / "out"))
    assert rc == 2
    err = capsys.readouterr().err
    assert "no input images found" in err and str(empty) in err


def test_class_from_folder(model_dir, tmp_path):
    root = tmp_path / "images"
    _save(root / "bottle" / "001.png", _noise(28, 28))
    _save(root / "metal_nut" / "001.png", _noise(28, 28))
    out = tmp_path / "out"
    assert _predict(model_dir, str(root), "--class-from-folder", "--out", str(out)) == 0
    rows = _rows(out)
    assert rows["bottle/001.png"]["class_name"] == "bottle"
    assert rows["metal_nut/001.png"]["class_name"] == "metal_nut"


def test_class_name_is_required(model_dir, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["predict", str(tmp_path), "--model", str(model_dir)])
    assert info.value.code == 1  # usage errors: 1, as the README says (2 = no input images)


def test_thresholds_masks_maps_and_is_anomalous(model_dir, tmp_path):
    root = tmp_path / "images"
    _save(root / "a.png", _noise(40, 56))
    _save(root / "b.png", _noise(35, 35, seed=9))
    out = tmp_path / "out"
    args = ["--class-name", "nut", "--out", str(out), "--save-maps", "--no-overlays"]
    rc = _predict(model_dir, str(root), *args, "--threshold", "0.5", "--image-threshold", "0")
    assert rc == 0
    assert not (out / "overlays").exists()
    for name, (h, w) in {"a": (40, 56), "b": (35, 35)}.items():
        amap = np.load(out / "maps" / f"{name}.npy")
        assert amap.shape == (h, w) and amap.dtype == np.float32
        assert 0.0 <= amap.min() and amap.max() <= 1.0
        with Image.open(out / "masks" / f"{name}.png") as im:
            mask = np.asarray(im)
        assert im.mode == "L" and mask.shape == (h, w)
        np.testing.assert_array_equal(mask == 255, amap >= 0.5)
        assert set(np.unique(mask)) <= {0, 255}
    rows = _rows(out)
    assert all(r["is_anomalous"] == "true" for r in rows.values())  # every score >= 0
    # the top of each scale (maps reach 1 and scores 2 only at certainty): nothing anomalous
    out2 = tmp_path / "out2"
    args2 = ["--class-name", "nut", "--out", str(out2), "--no-overlays"]
    rc = _predict(model_dir, str(root), *args2, "--threshold", "1", "--image-threshold", "2")
    assert rc == 0
    assert all(r["is_anomalous"] == "false" for r in _rows(out2).values())
    with Image.open(out2 / "masks" / "a.png") as im:
        assert np.asarray(im).max() == 0


def _dark_is_hot(monkeypatch):
    """Make the detector's maps = 1 - brightness of its input, so a dark defect is hottest."""
    original = Detector.score_batch

    def score_batch(self, images, class_names):
        scores = original(self, images, class_names)
        scores.maps = 1.0 - images.to(scores.maps.device).mean(dim=1)
        return scores

    monkeypatch.setattr(Detector, "score_batch", score_batch)


def test_overlay_and_map_are_hot_on_the_drawn_defect(model_dir, tmp_path, monkeypatch):
    _dark_is_hot(monkeypatch)
    h, w, (y0, y1, x0, x1) = 98, 126, (30, 70, 60, 110)
    img = np.full((h, w, 3), 200, np.uint8)
    img[y0:y1, x0:x1] = 10  # a dark "hole"
    root = tmp_path / "images"
    _save(root / "part.png", img)
    out = tmp_path / "out"
    args = ["--class-name", "nut", "--out", str(out), "--save-maps"]
    assert _predict(model_dir, str(root), *args) == 0
    inside = np.zeros((h, w), bool)
    inside[y0 + 6 : y1 - 6, x0 + 6 : x1 - 6] = True
    outside = np.ones((h, w), bool)
    outside[y0 - 6 : y1 + 6, x0 - 6 : x1 + 6] = False
    amap = np.load(out / "maps" / "part.npy")
    assert amap[inside].mean() > amap[outside].mean() + 0.5
    with Image.open(out / "overlays" / "part.png") as im:
        assert im.size == (w, h)
        rgb = np.asarray(im).astype(float)
    redness = rgb[..., 0] - rgb[..., 2]
    assert redness[inside].mean() > redness[outside].mean() + 100


def test_interrupt_keeps_the_rows_computed_so_far(model_dir, tmp_path, monkeypatch, capsys):
    root = tmp_path / "images"
    for i in range(5):
        _save(root / f"{i}.png", _noise(28, 28, seed=i))
    original, calls = Detector.score_batch, []

    def score_batch(self, images, class_names):
        calls.append(len(images))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(self, images, class_names)

    monkeypatch.setattr(Detector, "score_batch", score_batch)
    out = tmp_path / "out"
    rc = _predict(
        model_dir, str(root), "--class-name", "nut", "--out", str(out), "--batch-size", "1"
    )
    assert rc == 130
    assert "interrupted" in capsys.readouterr().err
    assert list(_rows(out)) == ["0.png", "1.png"]
    doc = json.loads((out / "scores.json").read_text())
    assert doc["complete"] is False and len(doc["results"]) == 2
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["0.png", "1.png"]


def test_bad_prompt_type_is_a_usage_error(model_dir, tmp_path, capsys):
    _save(tmp_path / "images" / "a.png", _noise(28, 28))
    rc = _predict(model_dir, str(tmp_path / "images"), "--class-name", "nut", "--prompt-type", "x")
    assert rc == 1
    assert "no prompt ensemble 'x'" in capsys.readouterr().err


def test_output_folder_inside_the_input_folder_is_not_rescanned(model_dir, tmp_path):
    root = tmp_path / "images"
    _save(root / "a.png", _noise(28, 28))
    out = root / "results"
    for _ in range(2):
        assert _predict(model_dir, str(root), "--class-name", "nut", "--out", str(out)) == 0
        assert list(_rows_in(out)) == ["a.png"]


def _rows_in(out: Path) -> list[str]:
    with open(out / "scores.csv", newline="") as fh:
        return [Path(r["path"]).name for r in csv.DictReader(fh)]


# -- the runner as a library ------------------------------------------------------------------
def test_run_predict_from_python(model_dir, tmp_path):
    root = tmp_path / "images"
    _save(root / "good" / "1.png", _noise(30, 40))
    (root / "bad").mkdir()
    (root / "bad" / "2.png").write_bytes(b"")
    detector = Detector(load_model_dir(model_dir), image_size=SIZE, sigma=4)
    summary = run_predict(
        detector, [root], class_name=lambda p: p.parent.name, out_dir=tmp_path / "out"
    )
    assert (summary.images, summary.ok, summary.failed) == (2, 1, 1)
    assert summary.failed_paths == [str(root / "bad" / "2.png")]
    assert [r["class_name"] for r in summary.rows] == ["bad", "good"]
    assert summary.csv_path.is_file() and summary.json_path.is_file()
    with pytest.raises(NoInputsError):
        run_predict(detector, [tmp_path / "nope-*.png"], class_name="x", out_dir=tmp_path / "o")
    with pytest.raises(ValueError, match="exactly one"):
        run_predict(detector, [root], out_dir=tmp_path / "o")


def test_expand_inputs_rules(tmp_path):
    for name in ("b.png", "a.JPG", ".hidden.png", "notes.txt", "sub/c.bmp", ".git/d.png"):
        p = tmp_path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")
    found = expand_inputs([tmp_path])
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["a.JPG", "b.png", "sub/c.bmp"]
    # explicit files are kept whatever their extension, missing ones too; duplicates dropped
    explicit = expand_inputs([tmp_path / "notes.txt", tmp_path / "gone.png", tmp_path / "b.png"])
    assert [p.name for p in explicit] == ["notes.txt", "gone.png", "b.png"]
    assert len(expand_inputs([tmp_path / "b.png", tmp_path, str(tmp_path / "*.png")])) == 3
    assert expand_inputs([str(tmp_path / "*.txt")]) == []  # globs pick images only


def test_output_names_are_unique_and_mirror_folders(tmp_path):
    files = [tmp_path / p for p in ("a/x.png", "b/x.png", "b/y.png", "b/y.jpg", "b/z")]
    assert output_names(files) == ["a/x", "b/x", "b/y.png", "b/y.jpg", "b/z"]
    assert output_names([tmp_path / "one.png"]) == ["one"]
    assert output_names([]) == []
    tricky = [tmp_path / p for p in ("x.png", "x.jpg", "x.png.bmp")]
    names = output_names(tricky)
    assert len(set(names)) == 3 and names[2].startswith("x.png")


def test_default_pixel_prompts_follow_the_backbone(tmp_path):
    """predict's --pixel-prompts (default auto) as cmd_predict resolves it."""
    assert resolve_pixel_prompts("auto", "l14h") == "trained-on-mvtec"
    assert resolve_pixel_prompts("auto", "tips-v1-l14-highres") == "trained-on-mvtec"
    assert resolve_pixel_prompts("auto", "b14h") is None
    assert resolve_pixel_prompts("auto", str(tmp_path)) is None
    assert resolve_pixel_prompts("none", "l14h") is None
    assert resolve_pixel_prompts("None", "l14h") is None
    assert resolve_pixel_prompts("trained-on-visa", "b14h") == "trained-on-visa"


def test_help_documents_outputs_and_exit_codes(capsys):
    with pytest.raises(SystemExit):
        main(["predict", "--help"])
    text = capsys.readouterr().out
    for word in ("scores.csv", "overlays/NAME.png", "exit status", "trained-on-mvtec", "[0, 1]"):
        assert word in text


def test_devices_without_cuda(model_dir, tmp_path, monkeypatch, capsys):
    from tipsomaly.tips.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu" and resolve_device("cpu").type == "cpu"
    _save(tmp_path / "images" / "a.png", _noise(28, 28))
    for device in ("cuda", "cuda:1", "floppy"):
        rc = _predict(model_dir, str(tmp_path / "images"), "--class-name", "x", "--device", device)
        assert rc == 1
        assert f"--device {device}" in capsys.readouterr().err


def test_rerun_replaces_outputs_and_drops_those_of_images_that_now_fail(model_dir, tmp_path):
    root = tmp_path / "images"
    _save(root / "a.png", _noise(28, 28))
    _save(root / "b.png", _noise(28, 28, seed=1))
    out = tmp_path / "out"
    args = ["--class-name", "nut", "--out", str(out), "--threshold", "0.5", "--save-maps"]
    assert _predict(model_dir, str(root), *args) == 0
    (root / "b.png").write_bytes(b"")  # b breaks between the runs
    assert _predict(model_dir, str(root), *args) == 3
    assert (out / "overlays" / "a.png").is_file()
    for stale in ("overlays/b.png", "masks/b.png", "maps/b.npy"):
        assert not (out / stale).exists(), stale
    assert _rows(out)["b.png"]["status"] == "error"


def test_bad_out_and_empty_class_name(model_dir, tmp_path, capsys):
    _save(tmp_path / "images" / "a.png", _noise(28, 28))
    (tmp_path / "file").write_text("x")
    images = str(tmp_path / "images")
    assert _predict(model_dir, images, "--class-name", "x", "--out", str(tmp_path / "file")) == 1
    assert "is not a folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        _predict(model_dir, images, "--class-name", " ")
    assert info.value.code == 1


def test_readme_command_on_the_samples(model_dir, tmp_path):
    """The Quick start's command (with the tiny model): default --out in the working folder."""
    samples = Path(__file__).resolve().parents[2] / "samples"
    assert _predict(model_dir, str(samples), "--class-name", "brick wall") == 0
    with open(tmp_path / "tipsomaly-out" / "scores.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    names = ["brick_good", "brick_hole", "brick_scratch", "brick_stain"]
    assert [r["name"] for r in rows] == names
    for name in names:
        with Image.open(tmp_path / "tipsomaly-out" / "overlays" / f"{name}.png") as im:
            assert im.size == (256, 256)
        assert (samples / f"{name}.png").stat().st_size < 150_000
