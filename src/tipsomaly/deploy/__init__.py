"""Deployment: export the method to ONNX / OpenVINO, and run what was exported.

:mod:`.export` writes the graph (:mod:`.graph`) and its record ``export.json``
(:mod:`.metadata`) into a folder; :mod:`.inferencers` runs it with the ``predict`` contract of
:class:`~tipsomaly.method.detector.Detector`, on ONNX Runtime or OpenVINO.

The runtimes are optional extras: ``pip install 'tipsomaly[onnx]'`` (onnx, onnxscript,
onnxruntime) and ``'tipsomaly[openvino]'``; a missing one is named in the error message.
"""
