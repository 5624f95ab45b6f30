"""``eval --profile``: classes with a profile are scored against it, their rows stored apart."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic import mvtec_tree, tiny_model_dir
from tipsomaly.cli.main import main
from tipsomaly.method.detector import Detector
from tipsomaly.runners.config import EvalConfig
from tipsomaly.runners.evaluate import Evaluator, evaluate_datasets
from tipsomaly.runners.row_metrics import row_scores
from tipsomaly.runners.store import ClassPredictions, PredictionStore, sample_keys

SIZE = 56
CLASSES = {"bottle": (3, 3), "cable": (2, 2)}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("profiles") / "model")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return mvtec_tree(tmp_path_factory.mktemp("profiles-data") / "mini", CLASSES, size=64)


def _fit(model: Path, folder: Path, seed: int) -> Path:
    """A profile of class bottle fitted by ``tipsomaly fit`` on 3 noise images."""
    refs = folder / "refs"
    refs.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(3):
        pixels = (rng.random((64, 64, 3)) * 80 + 60).astype(np.uint8)
        Image.fromarray(pixels).save(refs / f"r{i}.png")
    out = folder / "profile"
    argv = ["fit", str(refs), "--class-name", "bottle", "--out", str(out), "--model", str(model),
            "--image-size", str(SIZE), "--dtype", "fp32", "-q"]  # fmt: skip
    assert main(argv) == 0
    return out


@pytest.fixture(scope="module")
def profiles(model, tmp_path_factory) -> list[Path]:
    base = tmp_path_factory.mktemp("fitted")
    return [_fit(model, base / "one", 1), _fit(model, base / "two", 2)]


@pytest.fixture
def network(monkeypatch) -> dict:
    """Counts the images scored (Detector.score_batch), by class."""
    seen: dict = {}
    score_batch = Detector.score_batch

    def counting(self, images, class_names):
        for name in (
            [class_names] * images.shape[0] if isinstance(class_names, str) else class_names
        ):
            seen[name] = seen.get(name, 0) + 1
        return score_batch(self, images, class_names)

    monkeypatch.setattr(Detector, "score_batch", counting)
    return seen


def _settings(model: Path, profile: Path | None = None, **given) -> EvalConfig:
    given = {"model": str(model), "image_size": SIZE, "workers": 0, "batch_size": 1, **given}
    if profile is None:
        return EvalConfig(**given)
    return EvalConfig.from_profile(profile, given=given)


def _no_model():
    raise AssertionError("the network must not be needed")


def test_eval_with_a_profile_scores_as_predict_does_and_records_it(
    model, data, profiles, tmp_path, capsys
):
    out = tmp_path / "out"
    argv = ["eval", "--data", str(data), "--model", str(model), "--image-size", str(SIZE),
            "--profile", str(profiles[0]), "--batch-size", "1", "--workers", "0",
            "--out", str(out), "-q"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "mini: fused against the profiles of bottle; zero-shot (no profile): cable" in printed
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["settings"]["mode"] == "fused"
    record = config["profiles"]["mini"]
    assert record["zero_shot"] == ["cable"]
    assert set(record["classes"]) == {"bottle"}
    assert record["classes"]["bottle"]["profile"] == str(profiles[0])
    assert "few_shot" not in config
    # the stored rows give predict's image scores with the profile, to the bit
    (store,) = {p.parent.parent for p in out.glob("mini/predictions/*/profile-*/bottle/*.npz")}
    rows = PredictionStore(store).open_class("bottle").rows
    settings = _settings(model, profiles[0])
    detector = Detector.from_config(settings)
    meta = json.loads((data / "meta.json").read_text())["test"]["bottle"]
    assert len(rows) == len(meta)
    for entry in meta:
        path = data / entry["img_path"]
        mask = data / entry["mask_path"] if entry["mask_path"] else None
        key, _ = sample_keys("bottle", path, entry["anomaly"], mask)
        arrays = {k: np.asarray(v)[None] for k, v in rows[key].items() if k != "pred_key"}
        one = ClassPredictions({**arrays, "index": np.array([0])}, {}, [str(path)])
        score1, score2 = row_scores(one, tiled=False)
        pred = detector.predict(path, "bottle")[0]
        assert pred.mode == "fused"
        assert (float(score1[0]), float(score2[0])) == (pred.score_cls1, pred.score_cls2)
    zero = Detector.from_config(_settings(model)).predict(path, "bottle")[0]
    assert zero.score_cls1 != pred.score_cls1  # the profile changed the score


def test_profile_rows_never_mix_with_zero_shot_rows_or_another_profile(
    model, data, profiles, tmp_path, network
):
    out = tmp_path / "out"
    n_bottle, n_cable = sum(CLASSES["bottle"]), sum(CLASSES["cable"])
    zero = evaluate_datasets([data], _settings(model), out, progress=False)[0]
    assert network == {"bottle": n_bottle, "cable": n_cable}
    assert zero.profiles is None
    first = evaluate_datasets([data], _settings(model, profiles[0]), out, progress=False)[0]
    # bottle scored against the profile; cable (no profile) is the zero-shot rows, reused
    assert network == {"bottle": 2 * n_bottle, "cable": n_cable}
    assert first.classes["cable"] == zero.classes["cable"]
    assert first.classes["bottle"] != zero.classes["bottle"]
    # a rerun resumes without the network, and records the same profile
    again = Evaluator(_settings(model, profiles[0]), out, progress=False,
                      detector_factory=_no_model).evaluate(data)  # fmt: skip
    assert again.classes == first.classes and again.profiles == first.profiles
    # another profile, or another mode, computes bottle again
    other = evaluate_datasets([data], _settings(model, profiles[1]), out, progress=False)[0]
    assert network == {"bottle": 3 * n_bottle, "cable": n_cable}
    bank = {r.profiles["classes"]["bottle"]["bank"] for r in (first, other)}
    assert len(bank) == 2
    few = evaluate_datasets(
        [data], _settings(model, profiles[0], mode="few-shot"), out, progress=False
    )[0]
    assert network == {"bottle": 4 * n_bottle, "cable": n_cable}
    assert few.profiles["mode"] == "few-shot"
    # and the zero-shot numbers are still the zero-shot ones
    plain = Evaluator(_settings(model), out, progress=False, detector_factory=_no_model)
    assert plain.evaluate(data).classes == zero.classes
