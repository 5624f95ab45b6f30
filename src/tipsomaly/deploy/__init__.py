"""Deployment: export the method to ONNX / OpenVINO, and run what was exported.

Layer: above :mod:`tipsomaly.method` (and ``data``, ``report``), below ``runners`` and ``cli``.

- :mod:`.graph`: :class:`~.graph.ExportModule`, the method for one class at one image size
  (positional embedding precomputed, text embeddings, a profile's bank and thresholds as
  buffers), fp32.
- :mod:`.export`: :func:`~.export.export` writes the graph (``model.onnx``, or
  ``model.xml``/``.bin``) and ``export.json`` into a folder, checking the exported graph
  against PyTorch.
- :mod:`.metadata`: ``export.json``, its schema and upgrade step.
- :mod:`.inferencers`: :func:`~.inferencers.load_inferencer` gives an
  :class:`~.inferencers.ExportedDetector` with the ``predict`` contract of
  :class:`~tipsomaly.method.detector.Detector`, on ONNX Runtime or OpenVINO.

The runtimes are optional extras: ``pip install 'tipsomaly[onnx]'`` (onnx, onnxscript,
onnxruntime) and ``'tipsomaly[openvino]'``; a missing one is named in the error message.
"""
