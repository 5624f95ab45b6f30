"""ONNX Runtime int8: the calibration records only the quantized layers' own tensors, and the
graph it gives is the one ONNX Runtime's own calibrator (over every MatMul) gives.

Recording every MatMul's input and output (the attention's (heads, tokens, tokens) products
among them) took 7 GB for B/14 at 518 px and killed an L/14 export on a 24 GB machine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from goldens import Golden, golden_dirs
from tipsomaly.deploy import quantize as quantize_module
from tipsomaly.deploy.export import export
from tipsomaly.deploy.graph import INPUT_NAME
from tipsomaly.method.detector import Detector

GOLDEN = Golden(golden_dirs()[0])
SIZE = GOLDEN.config["pipeline"]["image_size"]


@pytest.fixture(scope="module")
def fp32_graph(tmp_path_factory) -> Path:
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    out = tmp_path_factory.mktemp("fp32")
    detector = Detector(GOLDEN.model(), image_size=SIZE, text_cache=False)
    export(detector, "tile", out, "onnx", check=False)
    return out / "model.onnx"


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(3).random((n, 3, SIZE, SIZE), dtype=np.float32)


def test_only_the_quantized_layers_tensors_are_calibrated(fp32_graph, monkeypatch, tmp_path):
    import onnx
    from onnxruntime.quantization import MinMaxCalibrater

    offered: list[set[str]] = []
    recorded: list[set[str]] = []
    select, augment = MinMaxCalibrater.select_tensors_to_calibrate, MinMaxCalibrater.augment_graph

    def select_spy(self, model):
        tensors, infos = select(self, model)
        offered.append(tensors)
        return tensors, infos

    def augment_spy(self):
        augment(self)  # the graph the calibration session runs: one ReduceMin per tensor
        suffix = "_ReduceMin"
        outputs = [o.name for o in self.model.graph.output if o.name.endswith(suffix)]
        recorded.append({name[: -len(suffix)] for name in outputs})

    monkeypatch.setattr(MinMaxCalibrater, "select_tensors_to_calibrate", select_spy)
    monkeypatch.setattr(MinMaxCalibrater, "augment_graph", augment_spy)
    quantize_module.quantize_onnxruntime(fp32_graph, tmp_path / "q.onnx", _images(2), INPUT_NAME)
    graph = onnx.load(str(fp32_graph))
    quantized = set(quantize_module.quantized_nodes(graph))
    own = {t for n in graph.graph.node if n.name in quantized for t in (*n.input, *n.output)}
    attention = {
        t
        for n in graph.graph.node
        if n.op_type == "MatMul" and n.name not in quantized
        for t in (*n.input, *n.output)
    } - own
    assert attention and attention <= offered[0]  # ORT alone would record the attention too
    assert len(recorded) == 1 and recorded[0] and recorded[0] <= own
    assert not recorded[0] & attention


def test_the_narrowed_calibration_gives_ort_s_own_graph(fp32_graph, tmp_path):
    import onnx
    from onnx import numpy_helper
    from onnxruntime.quantization import quantize_static

    images = _images(3)
    ours, theirs = tmp_path / "ours.onnx", tmp_path / "theirs.onnx"
    quantize_module.quantize_onnxruntime(fp32_graph, ours, images, INPUT_NAME)
    options = quantize_module.ort_options(onnx.load(str(fp32_graph), load_external_data=False))
    reader = quantize_module.calibration_reader(INPUT_NAME, images)
    quantize_static(str(fp32_graph), str(theirs), reader, **options)
    a, b = onnx.load(str(ours)), onnx.load(str(theirs))
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]
    ia = {t.name: numpy_helper.to_array(t) for t in a.graph.initializer}
    ib = {t.name: numpy_helper.to_array(t) for t in b.graph.initializer}
    assert ia.keys() == ib.keys()
    assert all(np.array_equal(ia[k], ib[k]) for k in ia)  # the same scales and zero points
    assert sum(n.op_type == "QuantizeLinear" for n in a.graph.node) >= 8
