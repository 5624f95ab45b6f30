"""Run an export folder: one :class:`ExportedDetector` (the ``predict`` contract of
:class:`~tipsomaly.method.detector.Detector`) over a graph runner of its format.

- :mod:`.base`: :class:`ExportedDetector`, decoding and resizing with
  :mod:`tipsomaly.data.images` as the PyTorch path does, maps back to each image's size.
- :mod:`.onnx`: :class:`OnnxRunner` (ONNX Runtime, extra ``tipsomaly[onnx]``).
- :mod:`.openvino`: :class:`OpenVinoRunner` (OpenVINO, extra ``tipsomaly[openvino]``; it
  also reads ``.onnx`` files).

The runtimes are imported only when a runner is made, so importing this package needs
neither.
"""

from __future__ import annotations

import os
from pathlib import Path

from .base import ExportedDetector, open_runner
from .onnx import OnnxRunner
from .openvino import OpenVinoRunner

__all__ = ["ExportedDetector", "OnnxRunner", "OpenVinoRunner", "load_inferencer", "open_runner"]


def load_inferencer(
    folder: str | os.PathLike,
    *,
    runtime: str | None = None,
    batch_size: int | None = None,
    threads: int | None = None,
    **settings: object,
) -> ExportedDetector:
    """The :class:`ExportedDetector` of an export folder (``tipsomaly export``'s ``--out``).

    ``runtime`` defaults to the format's own (ONNX Runtime for ``onnx``, OpenVINO for
    ``openvino``); OpenVINO also runs an ``onnx`` export. ``settings``: as
    :class:`ExportedDetector` takes them (tiles, ROI, thresholds...).

    Raises:
        ExportError: no export there, or a malformed or altered one.
        MissingExtraError: the runtime is not installed (the message names the extra).

    Example:
        >>> detector = load_inferencer("export/")  # doctest: +SKIP
        >>> detector.predict("part.png", "screw")[0].image_score  # doctest: +SKIP
    """
    return ExportedDetector(
        Path(folder), runtime=runtime, threads=threads, batch_size=batch_size, **settings
    )
