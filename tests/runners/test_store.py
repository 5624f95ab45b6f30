"""The prediction store behind ``eval``: keyed on content, never stale, never torn.

Every test edits what a user could edit between two runs into one ``--out`` and checks that the
rerun gives exactly the numbers of a fresh run, computing only what changed (counted as images
through the network).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthetic import mvtec_tree, tiny_model_dir
from tipsomaly.cli.main import main
from tipsomaly.method.detector import Detector
from tipsomaly.runners.evaluate import EvalSettings, evaluate_datasets

CLASSES = {"bottle": (3, 4), "wood_grain": (2, 3)}
TOTAL = sum(g + b for g, b in CLASSES.values())


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("store") / "model")


@pytest.fixture
def data(tmp_path) -> Path:
    return mvtec_tree(tmp_path / "mvtec_mini", CLASSES)


@pytest.fixture
def network(monkeypatch) -> dict:
    """Counts the images that go through the network (Detector.score_batch)."""
    seen = {"images": 0, "calls": 0}
    original = Detector.score_batch

    def counting(self, images, class_names):
        seen["images"] += int(images.shape[0])
        seen["calls"] += 1
        return original(self, images, class_names)

    monkeypatch.setattr(Detector, "score_batch", counting)
    return seen


def _settings(model, **kw):
    return EvalSettings(
        **{"model": str(model), "image_size": 56, "batch_size": 2, "sigma": 2.0, **kw}
    )


def _run(model, data, out, **kw):
    return evaluate_datasets([data], _settings(model, **kw), out, progress=False)[0]


def _same(a, b) -> None:
    assert a.counts == b.counts
    assert set(a.classes) == set(b.classes)
    for name in a.classes:
        for key, value in b.classes[name].items():
            got = a.classes[name][key]
            assert got == pytest.approx(value, nan_ok=True), (name, key)


def _meta(data) -> dict:
    return json.loads((data / "meta.json").read_text())


def _fresh(model, data, tmp_path, network) -> object:
    """A run into a new folder (the reference), without counting its network images."""
    before = dict(network)
    result = _run(model, data, tmp_path / f"fresh-{before['calls']}")
    network.update(before)
    return result


def test_a_fixed_label_is_used_without_the_network(model, data, tmp_path, network):
    out = tmp_path / "out"
    first = _run(model, data, out)
    assert network["images"] == TOTAL
    meta = _meta(data)
    entry = meta["test"]["bottle"][-1]  # anomalous, relabelled normal
    entry["anomaly"], entry["mask_path"] = 0, ""
    (data / "meta.json").write_text(json.dumps(meta))
    again = _run(model, data, out)
    assert network["images"] == TOTAL  # no image went through the network again
    assert again.counts["bottle"]["anomalous"] == first.counts["bottle"]["anomalous"] - 1
    _same(again, _fresh(model, data, tmp_path, network))


def test_a_fixed_mask_is_used_without_the_network(model, data, tmp_path, network):
    out = tmp_path / "out"
    first = _run(model, data, out)
    mask = data / _meta(data)["test"]["bottle"][3]["mask_path"]
    Image.fromarray(np.full((48, 48), 255, np.uint8)).save(mask)  # the whole image is defect
    again = _run(model, data, out)
    assert network["images"] == TOTAL
    assert again.classes["bottle"]["pixel_auroc"] != first.classes["bottle"]["pixel_auroc"]
    assert again.classes["wood_grain"] == first.classes["wood_grain"]
    _same(again, _fresh(model, data, tmp_path, network))


def test_replaced_pixels_recompute_that_image_only(model, data, tmp_path, network):
    out = tmp_path / "out"
    _run(model, data, out)
    image = data / _meta(data)["test"]["wood_grain"][0]["img_path"]
    Image.fromarray(np.full((48, 48, 3), 7, np.uint8)).save(image)
    _run(model, data, out)
    assert network["images"] == TOTAL + 1
    again = _run(model, data, out)  # and nothing at all the third time
    assert network["images"] == TOTAL + 1
    _same(again, _fresh(model, data, tmp_path, network))


def test_weights_outside_the_model_folder_are_part_of_the_key(data, tmp_path, network):
    model = tiny_model_dir(tmp_path / "model")
    shared = tmp_path / "shared-weights"
    shared.mkdir()
    shutil.move(model / "vision.npz", shared / "vision.npz")
    description = json.loads((model / "model.json").read_text())
    description["vision"]["npz"] = "../shared-weights/vision.npz"
    (model / "model.json").write_text(json.dumps(description))
    out = tmp_path / "out"
    first = _run(model, data, out)
    with np.load(shared / "vision.npz", allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    biggest = max(arrays, key=lambda k: arrays[k].size)
    arrays[biggest] = arrays[biggest] * 1.5  # other weights, same file name, same folder
    np.savez(shared / "vision.npz", **arrays)
    again = _run(model, data, out)
    assert network["images"] == 2 * TOTAL  # everything recomputed
    assert again.classes != first.classes
    _same(again, _fresh(model, data, tmp_path, network))


def _interrupted(model, data, out, monkeypatch, after_calls: int) -> None:
    """A run killed (KeyboardInterrupt) at its ``after_calls + 1``-th network call."""
    original = Detector.score_batch
    calls = {"n": 0}

    def dying(self, images, class_names):
        calls["n"] += 1
        if calls["n"] > after_calls:
            raise KeyboardInterrupt
        return original(self, images, class_names)

    with monkeypatch.context() as m:
        m.setattr(Detector, "score_batch", dying)
        with pytest.raises(KeyboardInterrupt):
            _run(model, data, out)


def test_resume_after_interruption_computes_only_the_rest(
    model, data, tmp_path, monkeypatch, network
):
    _interrupted(model, data, tmp_path / "out", monkeypatch, after_calls=2)
    before = network["images"]
    resumed = _run(model, data, tmp_path / "out")
    assert network["images"] - before == TOTAL - 4  # the two finished batches of 2 were kept
    _same(resumed, _fresh(model, data, tmp_path, network))


def test_duplicate_parts_of_two_writers_do_not_duplicate_rows(
    model, data, tmp_path, monkeypatch, network
):
    out = tmp_path / "out"
    _interrupted(model, data, out, monkeypatch, after_calls=2)
    parts = sorted(out.rglob("part-*.npz"))
    assert parts
    for part in parts:  # what a second run writing into the same folder left behind
        shutil.copy(part, part.with_name("part-zz-" + part.name.removeprefix("part-")))
    resumed = _run(model, data, out)
    assert resumed.counts["bottle"]["evaluated"] == CLASSES["bottle"][0] + CLASSES["bottle"][1]
    _same(resumed, _fresh(model, data, tmp_path, network))


def test_an_unreadable_part_is_recomputed_and_no_part_is_overwritten(
    model, data, tmp_path, monkeypatch, network, caplog
):
    out = tmp_path / "out"
    _interrupted(model, data, out, monkeypatch, after_calls=3)
    parts = sorted(out.rglob("part-*.npz"), key=lambda p: p.stat().st_mtime_ns)
    assert len(parts) == 3  # three batches of bottle stored
    parts[0].write_bytes(parts[0].read_bytes()[:100])  # cut by a crash
    before = network["images"]
    with caplog.at_level(logging.WARNING):
        resumed = _run(model, data, out)
    assert "unreadable" in caplog.text and parts[0].name in caplog.text
    assert network["images"] - before == TOTAL - 4  # the cut part's 2 images again, not the others
    assert resumed.counts["bottle"] == {"images": 7, "evaluated": 7, "anomalous": 4, "failed": 0}
    _same(resumed, _fresh(model, data, tmp_path, network))


def test_a_truncated_store_file_does_not_block_the_rerun(model, data, tmp_path, network):
    out = tmp_path / "out"
    first = _run(model, data, out)
    files = list((out / "mvtec_mini").rglob("*.npz"))
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[:50])  # BadZipFile when read
    again = _run(model, data, out)
    assert network["images"] == 2 * TOTAL
    _same(again, first)


def test_non_finite_predictions_are_failed_images_and_not_stored(
    model, data, tmp_path, monkeypatch, network
):
    victim = str(data / _meta(data)["test"]["bottle"][0]["img_path"])
    original = Detector.score_batch

    def poisoned(self, images, class_names):
        scores = original(self, images, class_names)
        # the victim is the class's first image: the first row of its first batch
        if images.shape[0] and float(images[0].sum()) == first_image_sum[0]:
            scores.patch_probs[0] = torch.nan
        return scores

    from tipsomaly.data.images import load_image, preprocess

    first_image_sum = [float(preprocess(load_image(victim), 56).sum())]
    out = tmp_path / "out"
    with monkeypatch.context() as m:
        m.setattr(Detector, "score_batch", poisoned)
        result = _run(model, data, out)
    assert result.counts["bottle"]["failed"] == 1
    assert result.counts["bottle"]["evaluated"] == 6
    assert [e["path"] for e in result.errors] == [victim]
    assert "not finite" in result.errors[0]["error"]
    assert all(np.isfinite(v) for v in result.classes["bottle"].values())
    before = network["images"]
    again = _run(model, data, out)  # the failure was not stored: tried again
    assert network["images"] - before == 1
    assert again.counts["bottle"]["failed"] == 0


def test_failed_images_are_retried_by_the_next_run(model, data, tmp_path, network):
    victim = data / _meta(data)["test"]["bottle"][5]["img_path"]
    good = victim.read_bytes()
    victim.write_bytes(good[:60])
    out = tmp_path / "out"
    first = _run(model, data, out)
    assert first.counts["bottle"]["failed"] == 1
    victim.write_bytes(good)  # fixed
    again = _run(model, data, out)
    assert network["images"] == TOTAL  # TOTAL - 1, then the fixed one
    assert again.counts["bottle"]["failed"] == 0
    _same(again, _fresh(model, data, tmp_path, network))


HOLDER = textwrap.dedent(
    """
    import sys
    from tipsomaly.runners.lock import OutputLock
    lock = OutputLock(sys.argv[1], command="tipsomaly eval --data other").acquire()
    print("ready", flush=True)
    sys.stdin.readline()
    """
)


def test_a_second_eval_into_a_held_folder_is_refused(model, data, tmp_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ready"
        argv = ["eval", "--data", str(data), "--model", str(model), "--image-size", "56"]
        rc = main([*argv, "--out", str(out), "-q"])
        err = capsys.readouterr().err
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert rc != 0
    assert f"pid {holder.pid}" in err and str(out) in err and "tipsomaly eval --data other" in err
    assert not (out / "results.json").exists() and not (out / "mvtec_mini").exists()


def test_results_name_the_aupro_definition_and_the_device_used(model, data, tmp_path):
    out = tmp_path / "out"
    argv = ["eval", "--data", str(data), "--model", str(model), "--image-size", "56"]
    assert main([*argv, "--device", "auto", "--aupro", "mvtec", "--out", str(out), "-q"]) == 0
    doc = json.loads((out / "results.json").read_text())
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert doc["config"]["settings"]["device"] == expected
    dataset = doc["datasets"]["mvtec_mini"]
    assert dataset["device"] == expected
    assert dataset["aupro"]["definition"] == "mvtec"
    assert "official MVTec AD" in dataset["aupro"]["description"]
    assert b"\r\n" not in (out / "results.csv").read_bytes()


def test_undecodable_file_names_are_escaped_in_the_results(model, tmp_path, capsys):
    data = mvtec_tree(tmp_path / "odd_set", {"bottle": (2, 2)})
    meta = _meta(data)
    entry = meta["test"]["bottle"][0]
    raw = (data / entry["img_path"]).parent / os_name(b"\xffbad.png")
    (data / entry["img_path"]).rename(raw)
    raw.write_bytes(b"not a png")  # it fails, so its path lands in the error list
    entry["img_path"] = str(raw.relative_to(data))
    (data / "meta.json").write_text(json.dumps(meta))
    out = tmp_path / "out"
    argv = ["eval", "--data", str(data), "--model", str(tiny_model_dir(tmp_path / "m"))]
    assert main([*argv, "--image-size", "56", "--out", str(out), "-q"]) == 3
    text = (out / "results.json").read_text(encoding="utf-8")  # valid UTF-8
    assert "\\\\xffbad.png" in text
    assert "\\xffbad.png" in (out / "results.md").read_text(encoding="utf-8")


def os_name(raw: bytes) -> str:
    import os

    return os.fsdecode(raw)


def test_report_imports_neither_runners_nor_torch():
    code = (
        "import sys, tipsomaly.report.results, tipsomaly.report.tables\n"
        "bad = [m for m in sys.modules if m.startswith('tipsomaly.runners') or m == 'torch']\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_eval_equals_metrics_computed_directly_from_the_detector(model, data, tmp_path):
    """An independent path: the detector's own maps and scores, the masks as ``data`` reads
    them, the metrics called directly; eval (through its store, twice) must agree."""
    from tipsomaly.data.dataset import AnomalyDataset
    from tipsomaly.data.meta import read_meta
    from tipsomaly.metrics import class_metrics
    from tipsomaly.tips.model import load_model_dir

    detector = Detector(load_model_dir(model), image_size=56, sigma=2.0)
    meta = read_meta(data, "test")
    expected = {}
    for class_name, samples in meta.samples.items():
        items = [AnomalyDataset(samples, 56)[i] for i in range(len(samples))]
        images = torch.stack([it["image"] for it in items])
        scores = detector.score_batch(images, class_name)
        expected[class_name] = class_metrics(
            scores.score_cls1.numpy(),
            scores.score_cls2.numpy(),
            np.array([it["label"] for it in items]),
            scores.maps.numpy(),
            torch.stack([it["mask"] for it in items]).numpy() > 0.5,
        )
    out = tmp_path / "out"
    for _ in range(2):  # computed, then read back from the store
        result = _run(model, data, out)
        for class_name, metrics in expected.items():
            for key, value in metrics.items():
                got = result.classes[class_name][key]
                assert got == pytest.approx(value, abs=1e-5), (class_name, key)
