"""``eval --engine``: each class on its own exported engine (its profile's, if any), the
metrics of the fp32 engines equal torch's, int8 runs with its recalibrated profile."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic import mvtec_tree, tiny_model_dir
from tipsomaly.cli.main import main

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")

SIZE = "56"
CLASSES = {"bottle": (3, 3), "cable": (2, 2)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("eval-engines")
    model = tiny_model_dir(root / "model")
    data = mvtec_tree(root / "mini", CLASSES, size=64)
    refs = root / "refs"
    refs.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray((rng.random((64, 64, 3)) * 80 + 60).astype(np.uint8)).save(
            refs / f"r{i}.png"
        )
    profile = root / "profile"
    assert main(["fit", str(refs), "--class-name", "bottle", "--out", str(profile), "--model",
                 str(model), "--image-size", SIZE, "--dtype", "fp32", "-q"]) == 0  # fmt: skip
    return {"root": root, "model": model, "data": data, "refs": refs, "profile": profile}


def _eval(setup, out: Path, *extra: str) -> dict:
    argv = ["eval", "--data", str(setup["data"]), "--model", str(setup["model"]),
            "--image-size", SIZE, "--profile", str(setup["profile"]), "--batch-size", "2",
            "--workers", "0", "--out", str(out), "-q", *extra]  # fmt: skip
    assert main(argv) == 0
    return json.loads((out / "results.json").read_text())


def _metrics(results: dict) -> dict[str, float]:
    found = {}

    def walk(value, path):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(v, f"{path}/{k}")
        elif isinstance(value, float):
            found[path] = value

    walk({k: v for k, v in results.items() if k not in ("config", "environment")}, "")
    return found


def test_eval_on_an_exported_engine_gives_torchs_metrics(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path / "home"))
    torch_run = _eval(setup, tmp_path / "torch")
    ort_run = _eval(setup, tmp_path / "ort", "--engine", "onnxruntime")
    assert ort_run["config"]["settings"]["engine"] == "onnxruntime"
    a, b = _metrics(torch_run), _metrics(ort_run)
    assert any("auroc" in k.lower() for k in a), sorted(a)
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], abs=1e-4), key
    # one engine per class, the profile's class with its bank (two cache entries)
    assert len(list((tmp_path / "home" / "engines").glob("*/export.json"))) == 2


def test_eval_on_int8_runs_each_class_on_its_int8_engine(setup, tmp_path, monkeypatch):
    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path / "home"))
    results = _eval(setup, tmp_path / "int8", "--engine", "openvino", "--precision", "int8",
                    "--calibration-images", str(setup["refs"]))  # fmt: skip
    assert results["config"]["settings"]["precision"] == "int8"
    records = [
        json.loads(p.read_text()) for p in (tmp_path / "home" / "engines").glob("*/export.json")
    ]
    assert sorted(r["class_name"] for r in records) == ["bottle", "cable"]
    assert all(r["graph"]["precision"] == "int8" for r in records)
    bottle = next(r for r in records if r["class_name"] == "bottle")
    assert bottle["thresholds"]["calibrated_with"] == {"engine": "openvino", "precision": "int8"}
