"""``tipsomaly eval --shots K``: the few-shot protocol on generated textures with drawn defects.

Each class is a striped texture (its own frequency and angle, a little noise); anomalous test
images carry a flat dark or red square. With the tiny random golden model the zero-shot scores
are near chance, while the distance to K train normal images separates the squares.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic import tiny_model_dir, tiny_vision
from tipsomaly.cli.main import main
from tipsomaly.errors import InvalidOptionError
from tipsomaly.method.detector import Detector
from tipsomaly.runners.evaluate import (
    EvalSettings,
    Evaluator,
    FewShotError,
    draw_shots,
    evaluate_datasets,
)
from tipsomaly.runners.few_shot import BANK_RECORD
from tipsomaly.runners.store import config_key, prediction_config

#: class → (train normal, test normal, test anomalous) images
CLASSES = {"fabric": (5, 4, 4), "tiles": (5, 4, 4)}
TEST_IMAGES = sum(g + b for _, g, b in CLASSES.values())
SIZE = 4 * tiny_vision()["patch_size"]  # a 4x4 patch grid


def texture_tree(root: Path, classes: dict, size: int = 64, seed: int = 0) -> Path:
    """An MVTec-like tree with ``train/good`` images and ``meta.json``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    meta: dict = {"train": {}, "test": {}}
    for c, (cls, (n_train, n_good, n_bad)) in enumerate(classes.items()):
        freq, angle = 2 + 2 * c, 0.6 + 0.9 * c
        stripes = 2 * np.pi * freq * (xx * np.cos(angle) + yy * np.sin(angle))

        def normal(stripes: np.ndarray = stripes) -> np.ndarray:
            wave = np.sin(stripes + rng.uniform(0, 0.3))
            base = 128 + 60 * wave[..., None] * np.array([1.0, 0.8, 0.6])
            return np.clip(base + rng.normal(0, 8, (size, size, 3)), 0, 255).astype(np.uint8)

        for split, kind, count in (
            ("train", "good", n_train),
            ("test", "good", n_good),
            ("test", "crack", n_bad),
        ):
            folder = root / cls / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            meta[split].setdefault(cls, [])
            for i in range(count):
                image = normal()
                entry = {
                    "img_path": f"{cls}/{split}/{kind}/{i:03d}.png",
                    "mask_path": "",
                    "cls_name": cls,
                    "specie_name": kind,
                    "anomaly": int(kind != "good"),
                }
                if kind != "good":
                    mask = np.zeros((size, size), np.uint8)
                    y, x = rng.integers(0, size - size // 4, 2)
                    mask[y : y + size // 4, x : x + size // 4] = 255
                    image[mask > 0] = (230, 20, 20) if i % 2 else (20, 20, 20)
                    masks = root / cls / "ground_truth" / kind
                    masks.mkdir(parents=True, exist_ok=True)
                    Image.fromarray(mask).save(masks / f"{i:03d}_mask.png")
                    entry["mask_path"] = f"{cls}/ground_truth/{kind}/{i:03d}_mask.png"
                Image.fromarray(image).save(folder / f"{i:03d}.png")
                meta[split][cls].append(entry)
    (root / "meta.json").write_text(json.dumps(meta, indent=1))
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("shots") / "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return texture_tree(tmp_path_factory.mktemp("shots-data") / "textures", CLASSES)


@pytest.fixture
def network(monkeypatch) -> dict:
    """Counts the test images scored (Detector.score_batch) and the profiles fitted."""
    seen = {"images": 0, "fits": 0}
    score_batch = Detector.score_batch
    set_profiles = Detector.set_profiles

    def counting(self, images, class_names):
        seen["images"] += int(images.shape[0])
        return score_batch(self, images, class_names)

    def fitting(self, profile, mode=None):
        seen["fits"] += 1 if profile else 0
        return set_profiles(self, profile, mode)

    monkeypatch.setattr(Detector, "score_batch", counting)
    monkeypatch.setattr(Detector, "set_profiles", fitting)
    return seen


def _settings(model, **kw) -> EvalSettings:
    return EvalSettings(
        **{
            "model": str(model),
            "image_size": SIZE,
            "batch_size": 4,
            "sigma": 2.0,
            "pixel_prompts": "none",
            **kw,
        }
    )


def _run(model, data, out, **kw):
    return evaluate_datasets([data], _settings(model, **kw), out, progress=False)[0]


def _no_model():
    raise AssertionError("the network must not be needed")


def _cli(model, data, out, *extra) -> list[str]:
    return [
        "eval",
        "--data",
        str(data),
        "--model",
        str(model),
        "--image-size",
        str(SIZE),
        "--batch-size",
        "4",
        "--sigma",
        "2",
        "--pixel-prompts",
        "none",
        "--out",
        str(out),
        "-q",
        *map(str, extra),
    ]


# -- what a run records -----------------------------------------------------------------------
@pytest.mark.parametrize("shots", [1, 2])
def test_cli_records_shots_seed_mode_and_references(model, data, tmp_path, capsys, shots):
    out = tmp_path / "out"
    assert main(_cli(model, data, out, "--shots", shots, "--shot-seed", 3)) == 0
    printed = capsys.readouterr().out
    assert f"fused, {shots} reference image(s) per class" in printed
    results = json.loads((out / "results.json").read_text())
    settings = results["config"]["settings"]
    assert (settings["shots"], settings["shot_seed"], settings["mode"]) == (shots, 3, "fused")
    record = results["config"]["few_shot"]["textures"]
    assert record["skipped"] == {}
    assert set(record["classes"]) == set(CLASSES)
    for cls, entry in record["classes"].items():
        refs = entry["references"]
        assert len(refs) == len(set(refs)) == shots
        assert all(r.startswith(f"{cls}/train/good/") and (data / r).is_file() for r in refs)
        assert isinstance(entry["bank"], str) and len(entry["bank"]) >= 16
    classes = results["datasets"]["textures"]["classes"]
    assert set(classes) == set(CLASSES)
    assert all(0.0 <= m["image_auroc_cls1"] <= 1.0 for m in classes.values())


def test_zero_shot_records_its_mode_and_no_references(model, data, tmp_path):
    out = tmp_path / "out"
    assert main(_cli(model, data, out)) == 0
    results = json.loads((out / "results.json").read_text())
    settings = results["config"]["settings"]
    assert (settings["shots"], settings["mode"]) == (0, "zero-shot")
    assert "few_shot" not in results["config"]


def test_the_draw_is_deterministic_nested_and_seeded(data):
    classes = list(CLASSES)
    one = draw_shots(data, classes, 1, seed=0)
    two = draw_shots(data, classes, 2, seed=0)
    again = draw_shots(data, classes, 2, seed=0)
    other = draw_shots(data, classes, 2, seed=1)
    assert two == again
    for cls in classes:
        assert two.references[cls][:1] == one.references[cls]  # K = 1 ⊂ K = 2
        assert all(s.anomaly == 0 for s in two.references[cls])
    assert any(other.references[c] != two.references[c] for c in classes)
    # a class's draw does not depend on the other classes asked for
    assert draw_shots(data, ["tiles"], 2, seed=0).references["tiles"] == two.references["tiles"]


def test_same_seed_same_metrics_other_seed_other_references(model, data, tmp_path):
    first = _run(model, data, tmp_path / "a", shots=2, shot_seed=7)
    second = _run(model, data, tmp_path / "b", shots=2, shot_seed=7)
    assert first.few_shot == second.few_shot
    assert first.classes == second.classes  # identical numbers, computed twice
    other = _run(model, data, tmp_path / "c", shots=2, shot_seed=8)
    assert any(
        other.few_shot["classes"][c]["references"] != first.few_shot["classes"][c]["references"]
        for c in CLASSES
    )


# -- shots 0 is today's eval ------------------------------------------------------------------
def test_shots_zero_is_the_plain_eval(model, data, tmp_path, network):
    plain = _settings(model)
    zero = _settings(model, shots=0, shot_seed=5, mode="zero-shot")
    assert prediction_config(zero) == prediction_config(plain)
    assert "few_shot" not in prediction_config(plain)
    out = tmp_path / "out"
    first = Evaluator(plain, out, progress=False).evaluate(data)
    assert network["images"] == TEST_IMAGES and network["fits"] == 0
    again = Evaluator(zero, out, progress=False, detector_factory=_no_model).evaluate(data)
    assert again.classes == first.classes  # the same store: nothing computed
    fresh = Evaluator(zero, tmp_path / "fresh", progress=False).evaluate(data)
    assert fresh.classes == first.classes and fresh.few_shot is None


def test_prediction_keys_separate_shots_seeds_and_modes(model):
    keys = {
        config_key(prediction_config(_settings(model, **kw)))
        for kw in (
            {},
            {"shots": 1},
            {"shots": 2},
            {"shots": 2, "shot_seed": 1},
            {"shots": 2, "mode": "few-shot"},
            {"shots": 2, "mode": "zero-shot"},
        )
    }
    assert len(keys) == 6


# -- the store ----------------------------------------------------------------------------------
def test_zero_and_few_shot_runs_into_one_out_never_share(model, data, tmp_path, network):
    out = tmp_path / "out"
    zero = _run(model, data, out)
    assert network["images"] == TEST_IMAGES
    few = _run(model, data, out, shots=2)
    assert network["images"] == 2 * TEST_IMAGES  # every test image scored again
    assert network["fits"] == len(CLASSES)
    for cls in CLASSES:
        assert few.classes[cls]["pixel_auroc"] != zero.classes[cls]["pixel_auroc"]
    other_seed = _run(model, data, out, shots=2, shot_seed=1)
    assert network["images"] == 3 * TEST_IMAGES
    # the same settings again: every prediction stored, the model never loaded
    settings = _settings(model, shots=2)
    again = Evaluator(settings, out, progress=False, detector_factory=_no_model).evaluate(data)
    assert again.classes == few.classes
    assert again.few_shot == few.few_shot
    assert other_seed.few_shot != few.few_shot
    # and the zero-shot numbers are still the zero-shot ones
    plain = Evaluator(_settings(model), out, progress=False, detector_factory=_no_model)
    assert plain.evaluate(data).classes == zero.classes


def test_metric_only_rerun_of_a_few_shot_run_does_not_load_the_model(model, data, tmp_path):
    out = tmp_path / "out"
    first = _run(model, data, out, shots=1)
    for change in ({"aupro": "mvtec"}, {"sigma": 3.0}, {"cls": "cls2"}):
        settings = _settings(model, shots=1, **change)
        again = Evaluator(settings, out, progress=False, detector_factory=_no_model)
        assert set(again.evaluate(data).classes) == set(first.classes)


def test_an_interrupted_few_shot_run_resumes(model, data, tmp_path, network):
    out = tmp_path / "out"
    first = _run(model, data, out, shots=2)
    # lose one class's rows: only that class is fitted and scored again
    root = Evaluator(_settings(model, shots=2), out).store_for("textures").root
    (store_file,) = root.glob("references-*/tiles/store.npz")
    store_file.unlink()
    before = dict(network)
    again = _run(model, data, out, shots=2)
    assert network["images"] - before["images"] == sum(CLASSES["tiles"][1:])
    assert network["fits"] - before["fits"] == 1
    assert again.classes == first.classes


def test_rows_are_kept_only_beside_the_bank_they_were_scored_against(model, tmp_path, network):
    data = texture_tree(tmp_path / "textures", CLASSES, seed=2)
    out = tmp_path / "out"
    first = _run(model, data, out, shots=2)
    root = Evaluator(_settings(model, shots=2), out).store_for("textures").root
    records = {json.loads(p.read_text())["class"]: p for p in root.glob(f"*/{BANK_RECORD}")}
    assert set(records) == set(CLASSES)
    fabric = json.loads(records["fabric"].read_text())
    assert fabric["bank"] == first.few_shot["classes"]["fabric"]["bank"]
    n_fabric = sum(CLASSES["fabric"][1:])

    def add_test_image(name: str) -> None:
        meta = json.loads((data / "meta.json").read_text())
        entry = dict(meta["test"]["fabric"][0], img_path=f"fabric/test/good/{name}.png")
        pixels = np.array(Image.open(data / meta["test"]["fabric"][0]["img_path"]))
        pixels[0, 0] = (pixels[0, 0].astype(int) + 1 + len(name)) % 256
        Image.fromarray(pixels).save(data / entry["img_path"])
        meta["test"]["fabric"].append(entry)
        (data / "meta.json").write_text(json.dumps(meta))

    # a new image: the bank is fitted again, comes out the same, only the new image is scored
    add_test_image("new1")
    before = network["images"]
    _run(model, data, out, shots=2)
    assert network["images"] - before == 1
    # a record that does not match the fitted bank: the whole class is scored again
    records["fabric"].write_text(json.dumps({**fabric, "bank": "0" * 32}))
    add_test_image("new22")
    before = network["images"]
    again = _run(model, data, out, shots=2)
    assert network["images"] - before == n_fabric + 2
    assert json.loads(records["fabric"].read_text())["bank"] == fabric["bank"]
    # rows without a record are not trusted either
    records["tiles"].unlink()
    before = network["images"]
    third = _run(model, data, out, shots=2)
    assert network["images"] - before == sum(CLASSES["tiles"][1:])
    assert third.classes == again.classes
    assert again.classes["tiles"] == first.classes["tiles"]


def test_replaced_reference_bytes_recompute_that_class_only(model, tmp_path, network):
    data = texture_tree(tmp_path / "textures", CLASSES, seed=4)
    out = tmp_path / "out"
    first = _run(model, data, out, shots=1)
    ref = data / first.few_shot["classes"]["tiles"]["references"][0]
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(ref)
    before = dict(network)
    again = _run(model, data, out, shots=1)
    assert network["images"] - before["images"] == sum(CLASSES["tiles"][1:])
    assert again.classes["fabric"] == first.classes["fabric"]
    assert again.few_shot["classes"]["tiles"]["bank"] != first.few_shot["classes"]["tiles"]["bank"]


# -- what few-shot buys -----------------------------------------------------------------------
def test_few_shot_separates_drawn_defects(model, data, tmp_path):
    """Measured on this data (and on 3 other generator seeds): zero-shot pixel AUROC 0.6-0.77
    and image AUROC 0.44-1.0 per class (8 test images: chance is wide); few-shot and fused
    image AUROC 1.0 and pixel AUROC 0.98-0.99 for K = 1, 2, 4."""
    zero = _run(model, data, tmp_path / "out")
    for cls in CLASSES:
        assert zero.classes[cls]["pixel_auroc"] < 0.85, cls
    for shots, mode in ((1, None), (2, "few-shot"), (4, "fused")):
        few = _run(model, data, tmp_path / "out", shots=shots, mode=mode)
        for cls in CLASSES:
            assert few.classes[cls]["image_auroc_cls1"] >= 0.9, (shots, mode, cls)
            assert few.classes[cls]["image_auroc_cls2"] >= 0.9, (shots, mode, cls)
            assert few.classes[cls]["pixel_auroc"] >= 0.95, (shots, mode, cls)


def test_mode_zero_shot_with_shots_gives_the_zero_shot_numbers(model, data, tmp_path):
    zero = _run(model, data, tmp_path / "out")
    again = _run(model, data, tmp_path / "out", shots=1, mode="zero-shot")
    assert again.few_shot["mode"] == "zero-shot"
    for cls in CLASSES:
        for key, value in zero.classes[cls].items():
            assert again.classes[cls][key] == pytest.approx(value, abs=1e-6), (cls, key)


# -- classes and datasets that cannot follow the protocol ---------------------------------------
def test_a_class_with_too_few_train_images_is_skipped_with_a_note(model, tmp_path, capsys, caplog):
    data = texture_tree(tmp_path / "textures", {"fabric": (3, 2, 2), "tiles": (1, 2, 2)})
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="tipsomaly"):
        assert main(_cli(model, data, out, "--shots", 2)) == 0
    assert "textures: class tiles skipped: only 1 normal image(s)" in caplog.text
    printed = capsys.readouterr().out
    assert "skipped: tiles: only 1 normal image(s) in the train split, 2 needed" in printed
    results = json.loads((out / "results.json").read_text())
    record = results["config"]["few_shot"]["textures"]
    assert set(record["classes"]) == {"fabric"}
    assert "2 needed" in record["skipped"]["tiles"]
    assert set(results["datasets"]["textures"]["classes"]) == {"fabric"}


def test_no_class_with_enough_train_images_is_one_line(model, tmp_path, capsys):
    data = texture_tree(tmp_path / "textures", {"fabric": (1, 2, 2), "tiles": (2, 2, 2)})
    assert main(_cli(model, data, tmp_path / "out", "--shots", 4)) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    assert "textures" in err and "--shots 4" in err and "at most 2" in err


def test_a_layout_without_train_split_is_one_line(model, tmp_path, capsys, network):
    root = tmp_path / "mine"
    rng = np.random.default_rng(0)
    for kind in ("good", "dent"):
        (root / "widget" / kind).mkdir(parents=True)
        for i in range(2):
            image = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
            Image.fromarray(image).save(root / "widget" / kind / f"{i}.png")
    assert main(["data", "meta", str(root), "--layout", "folder", "-q"]) == 0
    capsys.readouterr()
    assert main(_cli(model, root, tmp_path / "out", "--shots", 1)) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("tipsomaly: error:") and "\n" not in err
    assert "mine" in err and "layout folder" in err and "train split" in err
    assert network["images"] == 0  # refused before anything ran
    with pytest.raises(FewShotError):
        draw_shots(root, ["widget"], 1, 0)


def test_the_error_comes_before_any_dataset_is_evaluated(model, data, tmp_path, network):
    bare = tmp_path / "bare"
    shutil.copytree(data, bare)
    meta = json.loads((bare / "meta.json").read_text())
    del meta["train"]
    (bare / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(FewShotError, match="bare"):
        evaluate_datasets([data, bare], _settings(model, shots=1), tmp_path / "out", progress=False)
    assert network["images"] == 0


# -- options --------------------------------------------------------------------------------------
def test_the_mode_choices_are_the_methods():
    from tipsomaly.method.scoring import MODES

    mode = next(f for f in dataclasses.fields(EvalSettings) if f.name == "mode")
    assert mode.metadata["choices"] == MODES and mode.default is None


@pytest.mark.parametrize(
    "change, words",
    [
        ({"shots": -1}, ["shots", "0 or more"]),
        ({"shot_seed": -1}, ["shot_seed"]),
        ({"shot_seed": 2**64}, ["shot_seed", "2**64"]),
        ({"mode": "both"}, ["mode", "few-shot"]),
        ({"mode": "few-shot"}, ["mode few-shot", "shots"]),
        ({"mode": "fused"}, ["mode fused", "shots"]),
    ],
)
def test_eval_config_checks_the_shot_options(change, words):
    with pytest.raises(InvalidOptionError) as info:
        EvalSettings(**change)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_scoring_mode_defaults():
    assert EvalSettings().scoring_mode == "zero-shot"
    assert EvalSettings(shots=1).scoring_mode == "fused"
    assert EvalSettings(shots=1, mode="few-shot").scoring_mode == "few-shot"
    assert EvalSettings(mode="zero-shot").scoring_mode == "zero-shot"
    shots = dataclasses.replace(EvalSettings(), shots=4)
    assert shots.scoring_mode == "fused"  # resolved when asked, not frozen at creation


def test_cli_refuses_mode_without_shots_in_one_line(model, data, tmp_path, capsys):
    assert main(_cli(model, data, tmp_path / "out", "--mode", "few-shot")) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "shots" in err
    with pytest.raises(SystemExit) as info:
        main(_cli(model, data, tmp_path / "out", "--shots", "-1"))
    assert info.value.code == 1
    assert "--shots" in capsys.readouterr().err
