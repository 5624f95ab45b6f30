"""Exported graphs (ONNX Runtime, OpenVINO) against PyTorch on the golden tiny model.

Tolerance: max |exported − PyTorch| <= 1e-5 on every score and map value (measured: about
3e-7, float32 rounding of a differently ordered computation), for batches of 1 and 3 from one
graph (the batch is a free dimension), zero-shot and with a few-shot profile (fused).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from goldens import Golden, golden_dirs
from tipsomaly import errors as _extras
from tipsomaly.deploy.export import export
from tipsomaly.deploy.graph import SCORE_NAMES, ExportModule
from tipsomaly.deploy.inferencers import load_inferencer, open_runner
from tipsomaly.deploy.metadata import (
    EXPORT_JSON,
    SCHEMA_VERSION,
    ExportError,
    is_export_dir,
    read_metadata,
    upgrade_to_latest,
)
from tipsomaly.method.detector import Detector
from tipsomaly.method.fitting import fit_profile
from tipsomaly.method.profile import Profile

GOLDEN = Golden(golden_dirs()[0])
SIZE = GOLDEN.config["pipeline"]["image_size"]
CLASS = "tile"
ATOL = 1e-5
RUNTIME_PACKAGE = {"onnx": "onnxruntime", "openvino": "openvino"}


def _detector(**kw) -> Detector:
    return Detector(GOLDEN.model(), image_size=SIZE, text_cache=False, **kw)


@pytest.fixture(scope="module")
def profile(tmp_path_factory) -> Profile:
    refs = [torch.rand(3, 84, 84, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    profile = fit_profile(_detector(), refs, CLASS)
    profile.save(tmp_path_factory.mktemp("profile"))
    return profile


_exports: dict[tuple[str, str], tuple[Path, Detector]] = {}


@pytest.fixture(scope="module")
def exported(tmp_path_factory, profile):
    """(format, kind) → (export folder, the Detector it was made from); made once each."""

    def make(fmt: str, kind: str) -> tuple[Path, Detector]:
        pytest.importorskip("onnxscript")
        pytest.importorskip(RUNTIME_PACKAGE[fmt])
        if (fmt, kind) not in _exports:
            detector = _detector(profile=profile) if kind == "fused" else _detector()
            out = tmp_path_factory.mktemp(f"export-{fmt}-{kind}")
            export(detector, CLASS, out, fmt)
            _exports[fmt, kind] = (out, detector)
        return _exports[fmt, kind]

    return make


def _max_diff(a: np.ndarray, b: torch.Tensor) -> float:
    return float(np.abs(a.astype(np.float64) - b.numpy().astype(np.float64)).max())


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.parametrize("kind", ["zero-shot", "fused"])
def test_exported_graph_equals_pytorch_at_batch_1_and_3(exported, fmt, kind):
    folder, detector = exported(fmt, kind)
    record = read_metadata(folder)
    runner = open_runner(folder / record["graph"]["file"], RUNTIME_PACKAGE[fmt])
    module = ExportModule.from_detector(detector, CLASS)
    assert runner.output_names == module.output_names
    golden = torch.from_numpy(GOLDEN["images"])
    for batch in (golden[:1], golden[1:4]):  # one graph, two batch sizes
        with torch.no_grad():
            expected = module(batch)
            scores = detector.score_batch(batch, CLASS)  # the PyTorch head itself
        got = runner(batch.numpy())
        n = len(SCORE_NAMES)  # the scores, the map and the evidence they are made of
        for name, e in zip(SCORE_NAMES, expected[:n], strict=True):
            assert got[name].shape == tuple(e.shape), name
            assert _max_diff(got[name], e) <= ATOL, (name, _max_diff(got[name], e))
        assert _max_diff(got["score_cls1"], scores.score_cls1) <= ATOL
        assert _max_diff(got["score_cls2"], scores.score_cls2) <= ATOL
        assert _max_diff(got["anomaly_map"], scores.maps) <= ATOL
        if kind == "fused":
            # decisions agree except where a value lies within the tolerance of the threshold
            label, mask = got["pred_label"], got["pred_mask"]
            assert label.dtype == np.bool_ and mask.shape == tuple(expected[3].shape)
            near = np.abs(got["image_score"] - float(module.image_threshold)) <= ATOL
            assert np.array_equal(label[~near], expected[n].numpy()[~near])
            near = np.abs(got["anomaly_map"] - float(module.pixel_threshold)) <= ATOL
            assert np.array_equal(mask[~near], expected[n + 1].numpy()[~near])


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_export_json_records_what_the_graph_is(exported, profile, fmt):
    folder, detector = exported(fmt, "fused")
    record = json.loads((folder / EXPORT_JSON).read_text())
    assert record["schema"] == "tipsomaly-export" and record["schema_version"] == SCHEMA_VERSION
    graph = record["graph"]
    assert graph["format"] == fmt and graph["precision"] == "fp32" and graph["opset"] == 18
    files = {"onnx": {"model.onnx"}, "openvino": {"model.xml", "model.bin"}}[fmt]
    assert set(graph["sha256"]) == files
    assert {p.name for p in folder.iterdir()} == files | {EXPORT_JSON}
    assert graph["input"] == {
        "name": "images",
        "shape": ["batch", 3, SIZE, SIZE],
        "dtype": "float32",
    }
    assert [o["name"] for o in graph["outputs"]] == [*SCORE_NAMES, "pred_label", "pred_mask"]
    identity, settings = record["identity"], record["settings"]
    assert record["class_name"] == CLASS and settings["image_size"] == SIZE
    assert record["mode"] == "fused" and settings["cls"] == "cls1" and settings["sigma"] == 4.0
    # one identity record: the profile's scoring entries, plus what runs it
    assert {k: identity[k] for k in profile.identity} == profile.identity
    assert record["profile"]["identity"] == profile.identity
    assert (identity["engine"], identity["precision"]) == ("torch", "fp32")
    assert record["thresholds"]["image"]["threshold"] == profile.image_threshold("fused")
    assert record["thresholds"]["pixel"]["threshold"] == profile.pixel_threshold("fused")
    assert record["profile"]["bank"] == {
        "patches": len(profile.bank.patches),
        "cls": 4,
        "in_graph": True,
    }
    assert record["preprocessing"]["normalize"] is None
    assert "BILINEAR" in record["preprocessing"]["resize"]
    assert max(record["parity"]["max_abs_diff"].values()) <= ATOL
    assert record["versions"]["torch"] == torch.__version__
    assert record["versions"][RUNTIME_PACKAGE[fmt]]


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_exported_detector_predicts_as_the_detector(exported, profile, fmt):
    folder, _ = exported(fmt, "fused")
    torch_detector = _detector(profile=profile)
    detector = load_inferencer(folder, batch_size=2)
    rng = np.random.default_rng(0)
    inputs = [
        rng.integers(0, 255, (90, 120, 3), dtype=np.uint8),
        Image.fromarray(rng.integers(0, 255, (50, 64, 3), dtype=np.uint8)),
        rng.integers(0, 255, (70, 70), dtype=np.uint8),
    ]
    got = detector.predict(inputs, CLASS)
    expected = torch_detector.predict(inputs, CLASS)
    for g, e in zip(got, expected, strict=True):
        assert g.ok and g.original_size == e.original_size
        for field in ("image_score", "score_cls1", "score_cls2"):
            assert abs(getattr(g, field) - getattr(e, field)) <= ATOL
        assert np.abs(g.anomaly_map - e.anomaly_map).max() <= ATOL
        assert np.abs(g.anomaly_map_original - e.anomaly_map_original).max() <= ATOL
        assert (g.mode, g.threshold, g.pixel_threshold) == (e.mode, e.threshold, e.pixel_threshold)
    assert detector.mode == "fused" and detector.profile_classes() == [CLASS]


def test_exported_detector_records_unreadable_images_and_refuses_other_classes(exported, tmp_path):
    folder, _ = exported("onnx", "zero-shot")
    detector = load_inferencer(folder)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    good = tmp_path / "good.png"
    Image.fromarray(np.full((30, 40, 3), 128, np.uint8)).save(good)
    preds = detector.predict([bad, good], CLASS, on_error="record")
    assert not preds[0].ok and preds[1].ok and preds[1].anomaly_map_original.shape == (30, 40)
    assert preds[1].threshold is None and preds[1].mode == "zero-shot"
    with pytest.raises(ExportError, match="exported for class 'tile', not 'screw'.*--class-name"):
        detector.predict([good], "screw")


def test_a_damaged_graph_or_record_is_refused(exported, tmp_path):
    folder, _ = exported("onnx", "zero-shot")
    copy = tmp_path / "copy"
    copy.mkdir()
    for p in folder.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    assert is_export_dir(copy) and not is_export_dir(tmp_path)
    data = bytearray((copy / "model.onnx").read_bytes())
    data[-1] ^= 1
    (copy / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ExportError, match="model.onnx is damaged or was replaced"):
        load_inferencer(copy).predict(np.zeros((20, 20, 3), np.uint8), CLASS)
    record = json.loads((copy / EXPORT_JSON).read_text())
    (copy / EXPORT_JSON).write_text(json.dumps({**record, "schema_version": SCHEMA_VERSION + 1}))
    with pytest.raises(ExportError, match="newer than this tipsomaly's"):
        load_inferencer(copy)
    (copy / "model.onnx").unlink()
    (copy / EXPORT_JSON).write_text(json.dumps(record))
    with pytest.raises(ExportError, match="graph file 'model.onnx' is not in"):
        load_inferencer(copy)
    with pytest.raises(ExportError, match="holds no export.json"):
        read_metadata(tmp_path)
    with pytest.raises(ExportError, match="not a tipsomaly export record"):
        upgrade_to_latest({"schema": "other"})


def test_missing_runtimes_name_their_extra(exported, monkeypatch):
    folder, _ = exported("onnx", "zero-shot")
    monkeypatch.setattr("tipsomaly.deploy.inferencers.base.available", lambda _module: False)
    with pytest.raises(_extras.MissingExtraError, match=r"pip install 'tipsomaly\[onnx\]'"):
        load_inferencer(folder)
    with pytest.raises(_extras.MissingExtraError, match=r"tipsomaly\[openvino\]"):
        _extras.require("no_such_module_here", "openvino", "exporting to openvino")
    with pytest.raises(ExportError, match="onnxruntime cannot run an openvino export"):
        monkeypatch.undo()
        ov_folder, _ = exported("openvino", "zero-shot")
        load_inferencer(ov_folder, runtime="onnxruntime")


def test_openvino_runs_an_onnx_export_too(exported):
    pytest.importorskip("openvino")
    folder, detector = exported("onnx", "zero-shot")
    image = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    a = load_inferencer(folder, runtime="openvino").predict(image, CLASS)[0]
    b = detector.predict(image, CLASS)[0]
    assert abs(a.image_score - b.image_score) <= ATOL
    assert np.abs(a.anomaly_map - b.anomaly_map).max() <= ATOL
