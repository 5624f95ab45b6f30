"""``tipsomaly eval`` end to end on a generated dataset with the tiny golden model."""

from __future__ import annotations

import csv
import json
import math

import pytest

from synthetic import mvtec_tree, tiny_model_dir
from tipsomaly.cli.main import main
from tipsomaly.runners import evaluate as evaluate_module
from tipsomaly.runners.evaluate import EvalSettings, Evaluator

CLASSES = {"bottle": (3, 4), "wood_grain": (2, 3)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tmp_path_factory.mktemp("eval")
    model = tiny_model_dir(base / "model")
    data = mvtec_tree(base / "mvtec_mini", CLASSES)
    return model, data


def _settings(model, **kw):
    return EvalSettings(
        **{"model": str(model), "image_size": 56, "batch_size": 2, "sigma": 2.0, **kw}
    )


def test_cli_writes_tables_and_files(setup, tmp_path, capsys):
    model, data = setup
    out = tmp_path / "out"
    argv = [
        "eval",
        "--data",
        str(data),
        "--model",
        str(model),
        "--image-size",
        "56",
        "--batch-size",
        "3",
        "--sigma",
        "2",
        "--out",
        str(out),
        "-q",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    for name in ("bottle", "wood_grain", "mean", "I-AUROC", "P-AUPRO"):
        assert name in printed
    results = json.loads((out / "results.json").read_text())
    classes = results["datasets"]["mvtec_mini"]["classes"]
    assert set(classes) == set(CLASSES)
    for metrics in classes.values():
        for key in ("image_auroc_cls1", "image_auroc_cls2", "pixel_auroc", "pixel_aupro"):
            assert 0.0 <= metrics[key] <= 1.0
    assert results["config"]["environment"]["tipsomaly"]
    assert results["config"]["settings"]["aupro"] == "zsad"
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["class"] for r in rows] == ["bottle", "wood_grain", "mean"]
    assert (out / "results.md").read_text().count("| bottle |") == 1


def test_metric_only_rerun_does_not_load_the_model(setup, tmp_path):
    model, data = setup
    first = Evaluator(_settings(model), tmp_path).evaluate(data)

    def no_model():
        raise AssertionError("the network must not be needed")

    for change in ({"aupro": "mvtec"}, {"sigma": 3.0}, {"cls": "cls2"}):
        again = Evaluator(_settings(model, **change), tmp_path, detector_factory=no_model)
        result = again.evaluate(data)
        assert set(result.classes) == set(first.classes)
    assert (
        Evaluator(_settings(model, aupro="mvtec"), tmp_path, detector_factory=no_model)
        .evaluate(data)
        .classes["bottle"]["pixel_aupro"]
        != first.classes["bottle"]["pixel_aupro"]
    )


def test_corrupt_image_is_reported_and_excluded(setup, tmp_path, capsys):
    model, _ = setup
    data = mvtec_tree(tmp_path / "broken_set", CLASSES, seed=1)
    victim = data / "bottle" / "test" / "scratch" / "001.png"
    victim.write_bytes(victim.read_bytes()[:60])  # truncated PNG
    out = tmp_path / "out"
    argv = [
        "eval",
        "--data",
        str(data),
        "--model",
        str(model),
        "--image-size",
        "56",
        "--batch-size",
        "2",
        "--out",
        str(out),
        "-q",
    ]
    assert main(argv) == 3  # some images failed
    captured = capsys.readouterr()
    assert "001.png" in captured.out
    results = json.loads((out / "results.json").read_text())["datasets"]["broken_set"]
    assert results["counts"]["bottle"] == {"images": 7, "evaluated": 6, "anomalous": 3, "failed": 1}
    assert results["errors"][0]["path"].endswith("001.png")
    assert not math.isnan(results["classes"]["bottle"]["pixel_auroc"])


def test_several_datasets_give_a_summary(setup, tmp_path, capsys):
    model, data = setup
    other = mvtec_tree(tmp_path / "visa_mini", {"candle": (2, 2)}, seed=2)
    argv = [
        "eval",
        "--data",
        str(data),
        str(other),
        "--model",
        str(model),
        "--image-size",
        "56",
        "--batch-size",
        "4",
        "--out",
        str(tmp_path / "out"),
        "-q",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "summary" in printed and "industrial average" in printed


def test_protocol_pixel_prompts():
    pick = evaluate_module.protocol_pixel_prompts
    assert pick("l14h", "mvtec_anomaly_detection") == "trained-on-visa"
    assert pick("tips-v1-l14-highres", "VisA") == "trained-on-mvtec"
    assert pick("b14h", "visa") is None
