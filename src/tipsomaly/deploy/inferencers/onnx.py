"""ONNX Runtime: run an exported ``.onnx`` graph on the CPU, fp32."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ...errors import require

__all__ = ["OnnxRunner"]


class OnnxRunner:
    """``runner(images)``: (B, 3, S, S) float32 → ``{output name: array}``, with ONNX
    Runtime's CPU execution provider at full graph optimisation.

    ``threads``: intra-op threads (None: ONNX Runtime's default, one per physical core).

    Raises:
        MissingExtraError: onnxruntime is not installed (``tipsomaly[onnx]``).
    """

    runtime = "onnxruntime"

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None) -> None:
        ort = require("onnxruntime", "onnx", "running an ONNX export")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3  # errors only: no warnings about unused initialisers
        if threads:
            options.intra_op_num_threads = int(threads)
        self.path = Path(path)
        self.session = ort.InferenceSession(
            str(self.path), options, providers=["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.version = ort.__version__

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        outputs = self.session.run(None, {self.input_name: np.ascontiguousarray(images)})
        return dict(zip(self.output_names, outputs, strict=True))
