"""OpenVINO: run an exported graph (``.xml`` + ``.bin``, or ``.onnx``) on the CPU, fp32."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import require

__all__ = ["OpenVinoRunner", "shared_core"]

_core: Any = None
_core_lock = threading.Lock()


def shared_core() -> Any:
    """The process's one ``openvino.Core``, made on first use and never released.

    Why one: OpenVINO's CPU plugin (2026.4), when a Core creates it, registers its own signal
    stack on the calling thread and, when it is destroyed, restores the stack it found. Two
    Cores destroyed in the order they were made leave the thread with the first one's stack,
    already freed, and the next Python signal handler run on that thread (SIGCHLD, SIGTERM)
    kills the process with SIGSEGV. One Core living as long as the process restores nothing.

    Raises:
        MissingExtraError: openvino is not installed (``tipsomaly[openvino]``).
    """
    global _core
    with _core_lock:
        if _core is None:
            _core = require("openvino", "openvino", "running an OpenVINO export").Core()
        return _core


class OpenVinoRunner:
    """``runner(images)``: (B, 3, S, S) float32 → ``{output name: array}``, compiled for
    OpenVINO's CPU plugin.

    ``precision`` is OpenVINO's ``INFERENCE_PRECISION_HINT``: ``"f32"`` (default) keeps the
    graph in fp32 even on CPUs where OpenVINO would pick bf16 by itself (AMX, AVX-512-BF16);
    ``"bf16"`` lets it (benchmarks only: not checked for accuracy by ``predict``).
    ``threads``: ``INFERENCE_NUM_THREADS`` (None: OpenVINO's default).

    Raises:
        MissingExtraError: openvino is not installed (``tipsomaly[openvino]``).
    """

    runtime = "openvino"

    def __init__(
        self, path: str | os.PathLike, *, threads: int | None = None, precision: str = "f32"
    ) -> None:
        ov = require("openvino", "openvino", "running an OpenVINO export")
        core = shared_core()
        config: dict[str, object] = {"INFERENCE_PRECISION_HINT": precision}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        self.path = Path(path)
        self.compiled = core.compile_model(core.read_model(str(self.path)), "CPU", config)
        self.request = self.compiled.create_infer_request()
        self.input_name = self.compiled.inputs[0].get_any_name()
        self.output_names = tuple(o.get_any_name() for o in self.compiled.outputs)
        self.version = ov.__version__

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
        result = self.request.infer({self.input_name: np.ascontiguousarray(images)})
        # copies: the request reuses its output buffers on the next call
        return {
            name: np.array(result[out], copy=True)
            for name, out in zip(self.output_names, self.compiled.outputs, strict=True)
        }
