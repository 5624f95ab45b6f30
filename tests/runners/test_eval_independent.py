"""``eval``'s per-class metrics against an independent path to the same numbers.

The independent path: the public :class:`Detector` scores the images, ``tipsomaly.data`` reads
the masks, and scikit-learn (AUROC, AP, F1-max) and a direct per-threshold loop (AUPRO)
compute the metrics. Nothing of the evaluator or its prediction store is used, so a fault in
either (masks transposed on the way through the store, one CLS token's probabilities used for
the other's metrics, rows misaligned) shows up as a difference.
"""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

import tipsomaly.data.dataset as dataset_module
from synthetic import mvtec_tree, tiny_model_dir
from tipsomaly.data.images import load_mask
from tipsomaly.data.meta import read_meta
from tipsomaly.method.detector import Detector
from tipsomaly.runners.evaluate import EvalSettings, Evaluator, evaluate_datasets

_spec = importlib.util.spec_from_file_location(
    "reference_impl", Path(__file__).resolve().parents[1] / "metrics" / "reference_impl.py"
)
reference_impl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(reference_impl)

SIZE, SIGMA, BATCH = 56, 2.0, 2
CLASSES = {"bottle": (4, 5), "wood_grain": (3, 4)}
FLIP = "flip"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval_independent")
    model = tiny_model_dir(base / "model")
    data = mvtec_tree(base / "mvtec_mini", CLASSES, seed=11)
    _add_flip_class(model, data, base / "pool")
    return model, data


def _add_flip_class(model: Path, data: Path, pool: Path) -> None:
    """Add class ``flip``, whose image metrics differ between the two CLS tokens.

    With the tiny model both tokens rank most images alike, so the class is picked from
    candidates: an anomalous image ``i`` and a normal ``j`` that the two tokens order
    differently, plus an anomalous image above and a normal image below everything.
    """
    rng = np.random.default_rng(5)
    pool.mkdir()
    paths = []
    for k in range(48):
        image = (rng.random((48, 48, 3)) * rng.uniform(20, 200) + rng.uniform(0, 50)).astype(
            np.uint8
        )
        paths.append(pool / f"{k:03d}.png")
        Image.fromarray(image).save(paths[-1])
    detector = Detector(str(model), image_size=SIZE, sigma=SIGMA, batch_size=BATCH)
    predictions = detector.predict(paths, FLIP)
    s1 = np.array([p.score_cls1 for p in predictions])
    s2 = np.array([p.score_cls2 for p in predictions])
    flipped = [
        (i, j)
        for i in range(len(paths))
        for j in range(len(paths))
        if s1[i] > s1[j] and s2[i] < s2[j]
    ]
    assert flipped, "no pair of candidates is ordered differently by the two CLS tokens"
    i, j = flipped[0]
    rest = [k for k in range(len(paths)) if k not in (i, j)]
    top = max(rest, key=lambda k: min(s1[k], s2[k]))
    bottom = min(rest, key=lambda k: max(s1[k], s2[k]))
    assert min(s1[top], s2[top]) > max(s1[[i, j]].max(), s2[[i, j]].max())
    assert max(s1[bottom], s2[bottom]) < min(s1[[i, j]].min(), s2[[i, j]].min())
    meta = json.loads((data / "meta.json").read_text())
    entries = []
    for n, (k, anomalous) in enumerate([(i, 1), (top, 1), (j, 0), (bottom, 0)]):
        kind = "scratch" if anomalous else "good"
        folder = data / FLIP / "test" / kind
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(paths[k], folder / f"{n:03d}.png")
        entry = {
            "img_path": f"{FLIP}/test/{kind}/{n:03d}.png",
            "mask_path": "",
            "cls_name": FLIP,
            "specie_name": kind,
            "anomaly": anomalous,
        }
        if anomalous:
            mask = np.zeros((48, 48), np.uint8)
            mask[5 + 9 * n : 15 + 9 * n, 20:44] = 255  # off the diagonal: not transpose-symmetric
            (data / FLIP / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(data / FLIP / "ground_truth" / kind / f"{n:03d}_mask.png")
            entry["mask_path"] = f"{FLIP}/ground_truth/{kind}/{n:03d}_mask.png"
        entries.append(entry)
    meta["test"][FLIP] = entries
    meta["train"][FLIP] = []
    (data / "meta.json").write_text(json.dumps(meta, indent=1))


def _settings(model, **kw) -> EvalSettings:
    # workers=0: images load in this process, where the tests' stand-in loaders are patched
    settings = {"model": str(model), "image_size": SIZE, "batch_size": BATCH, "sigma": SIGMA}
    return EvalSettings(**{**settings, "workers": 0, **kw})


def _f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(labels, scores)
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    return float(f1.max())


def _independent_metrics(model, data, class_name: str, aupro: str) -> dict[str, float]:
    samples = read_meta(data, "test").samples[class_name]
    detector = Detector(str(model), image_size=SIZE, sigma=SIGMA, batch_size=BATCH)
    predictions = detector.predict([s.image_path for s in samples], class_name)
    labels = np.array([s.anomaly for s in samples])
    masks = np.stack(
        [load_mask(s.mask_path if s.anomaly else None, SIZE).numpy() > 0.5 for s in samples]
    )
    maps = np.stack([p.anomaly_map for p in predictions])
    out = {}
    for tag in ("cls1", "cls2"):
        scores = np.array([getattr(p, f"score_{tag}") for p in predictions])
        out[f"image_auroc_{tag}"] = roc_auc_score(labels, scores)
        out[f"image_ap_{tag}"] = average_precision_score(labels, scores)
        out[f"image_f1-max_{tag}"] = _f1_max(labels, scores)
    flat_maps, flat_masks = maps.ravel(), masks.ravel()
    out["pixel_auroc"] = roc_auc_score(flat_masks, flat_maps)
    out["pixel_ap"] = average_precision_score(flat_masks, flat_maps)
    out["pixel_f1-max"] = _f1_max(flat_masks, flat_maps)
    if aupro == "zsad":
        out["pixel_aupro"] = reference_impl.aupro_zsad_loop(maps, masks.astype(np.float32))
    else:
        out["pixel_aupro"] = reference_impl.aupro_mvtec_direct(maps, masks.astype(np.float32))
    return out


@pytest.mark.parametrize("aupro", ["zsad", "mvtec"])
def test_eval_metrics_equal_metrics_from_the_detector_and_the_data_masks(setup, tmp_path, aupro):
    model, data = setup
    result = evaluate_datasets([data], _settings(model, aupro=aupro), tmp_path, progress=False)[0]
    assert set(result.classes) == {*CLASSES, FLIP}
    for class_name, (n_good, n_bad) in {**CLASSES, FLIP: (2, 2)}.items():
        assert result.counts[class_name] == {
            "images": n_good + n_bad,
            "evaluated": n_good + n_bad,
            "anomalous": n_bad,
            "failed": 0,
        }
        expected = _independent_metrics(model, data, class_name, aupro)
        got = result.classes[class_name]
        assert set(got) == set(expected)
        for name, value in expected.items():
            assert got[name] == pytest.approx(value, abs=1e-6), (class_name, name)
        if class_name == FLIP:  # the case tells the two CLS tokens apart
            assert expected["image_auroc_cls1"] != expected["image_auroc_cls2"]
    means = result.mean
    for name in ("image_auroc_cls1", "pixel_auroc", "pixel_aupro"):
        values = [m[name] for m in result.classes.values()]
        assert means[name] == pytest.approx(sum(values) / len(values), abs=1e-12)


def test_the_case_tells_transposed_masks_apart(setup):
    """Guard for the test above: transposing the masks changes the pixel AUROC of this data."""
    model, data = setup
    samples = read_meta(data, "test").samples["bottle"]
    detector = Detector(str(model), image_size=SIZE, sigma=SIGMA, batch_size=BATCH)
    maps = np.stack([p.anomaly_map for p in detector.predict([s.image_path for s in samples], "x")])
    masks = np.stack([load_mask(s.mask_path if s.anomaly else None, SIZE).numpy() for s in samples])
    straight = roc_auc_score(masks.ravel() > 0.5, maps.ravel())
    transposed = roc_auc_score(masks.transpose(0, 2, 1).ravel() > 0.5, maps.ravel())
    assert abs(straight - transposed) > 0.01


def _broken_copy(tmp_path: Path) -> tuple[Path, Path, bytes]:
    data = mvtec_tree(tmp_path / "broken_set", {"bottle": (3, 4)}, seed=1)
    victim = data / "bottle" / "test" / "scratch" / "001.png"  # sample index 4 of 7
    good = victim.read_bytes()
    victim.write_bytes(good[:60])  # a truncated PNG
    return data, victim, good


def test_failed_images_are_retried_on_resume(setup, tmp_path, monkeypatch):
    """A failure is not a result: after an interruption, the resumed run tries the failed image
    again (here repaired in between), computes the image the interruption left out, and
    recomputes nothing it had stored. The result equals that of a clean run."""
    model, _ = setup
    data, victim, good = _broken_copy(tmp_path)
    real_load = dataset_module.load_image

    def dying_load(path):
        if Path(path).name == "003.png" and "scratch" in str(path):  # sample 6, the last
            raise KeyboardInterrupt
        return real_load(path)

    monkeypatch.setattr(dataset_module, "load_image", dying_load)
    with pytest.raises(KeyboardInterrupt):
        Evaluator(_settings(model), tmp_path / "out", progress=False).evaluate(data)
    victim.write_bytes(good)

    loaded: list[str] = []

    def counting_load(path):
        loaded.append(f"{Path(path).parent.name}/{Path(path).name}")
        return real_load(path)

    monkeypatch.setattr(dataset_module, "load_image", counting_load)
    resumed = Evaluator(_settings(model), tmp_path / "out", progress=False).evaluate(data)
    assert sorted(loaded) == ["scratch/001.png", "scratch/003.png"]
    assert resumed.counts["bottle"] == {"images": 7, "evaluated": 7, "anomalous": 4, "failed": 0}
    assert not resumed.errors
    monkeypatch.setattr(dataset_module, "load_image", real_load)
    clean = Evaluator(_settings(model), tmp_path / "clean", progress=False).evaluate(data)
    assert resumed.classes["bottle"] == pytest.approx(clean.classes["bottle"], abs=1e-6)


def test_a_repaired_image_is_evaluated_by_the_next_run(setup, tmp_path):
    model, _ = setup
    data, victim, good = _broken_copy(tmp_path)
    first = Evaluator(_settings(model), tmp_path / "out", progress=False).evaluate(data)
    assert first.counts["bottle"]["failed"] == 1
    assert [e["path"] for e in first.errors] == [str(victim)]
    victim.write_bytes(good)
    again = Evaluator(_settings(model), tmp_path / "out", progress=False).evaluate(data)
    assert again.counts["bottle"] == {"images": 7, "evaluated": 7, "anomalous": 4, "failed": 0}
    assert not again.errors
    assert not math.isnan(again.classes["bottle"]["pixel_auroc"])
