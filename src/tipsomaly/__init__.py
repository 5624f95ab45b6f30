"""tipsomaly: zero-shot visual anomaly detection (TipsOmaly, ICASSP 2026) on the TIPS backbone.

The public API, importable from the top (names load on first use, so ``import tipsomaly`` and
the CLI's ``--help`` do not import PyTorch)::

    from tipsomaly import Detector, run_predict, evaluate_datasets, train, TipsomalyError

- Predict: :class:`Detector` (``Detector.from_config``), :class:`Prediction`,
  :func:`run_predict`, :class:`PredictSummary`; :class:`DetectorConfig` (every setting),
  :class:`Predictor` (the pipeline every engine shares), :class:`Identity` (what produced a
  score), :class:`TipsomalyHead` (the method as one ``nn.Module``) and its
  :class:`DetectorOutput`.
- Few good images: :func:`fit_profile`, :class:`Profile` (``Profile.load`` / ``save``; use
  with ``Detector(..., profile=...)`` or ``DetectorConfig.from_profile``), :func:`run_fit`,
  :class:`Calibration`, :class:`Thresholds`.
- Deploy: :func:`export` (ONNX / OpenVINO graphs), :func:`load_inferencer` (run one, same
  :class:`Prediction` outputs); the service is ``tipsomaly.serve.create_app``.
- Evaluate: :func:`evaluate_datasets`, :class:`EvalConfig` (alias :class:`EvalSettings`),
  :class:`Evaluator`.
- Train: :func:`train`, :class:`TrainConfig`, :class:`TrainResult`.
- Prompts: :func:`load_pixel_prompts`, :class:`PixelPrompts`, :func:`load_prompts`.
- Backbone: :func:`load_model`, :func:`build_model`, :class:`TipsModel`, :data:`PRESETS`,
  :func:`get_preset`.
- Datasets: :func:`build_meta`, :func:`detect_layout`, :func:`read_meta`, :func:`write_meta`.
- Errors: :class:`TipsomalyError`, the base of every error a user can fix, and its subclasses.

The subpackages form layers, each importing only from those below it: errors, the backbone
(:mod:`tipsomaly.tips`), data and metrics, the method, reports, deployment, runners (each verb
as a library call), the service and the CLI (the order is in tests/test_layers.py).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> module (relative to this package) that defines it
_EXPORTS: dict[str, str] = {
    # predict
    "Detector": "method.detector",
    "Prediction": "method.detector",
    "run_predict": "runners.predict",
    "PredictSummary": "runners.predict",
    "DetectorConfig": "method.config",
    "TipsomalyHead": "method.head",
    "DetectorOutput": "method.head",
    # deploy
    "export": "deploy.export",
    "load_inferencer": "deploy.inferencers",
    # few good images
    "Profile": "method.profile",
    "fit_profile": "method.fitting",
    "Predictor": "method.pipeline",
    "Thresholds": "method.decision",
    "Identity": "identity",
    "run_fit": "runners.fit",
    "Calibration": "method.calibration",
    # evaluate
    "evaluate_datasets": "runners.evaluate",
    "EvalSettings": "runners.evaluate",
    "EvalConfig": "runners.config",
    "Evaluator": "runners.evaluate",
    # train
    "train": "runners.train",
    "TrainConfig": "runners.train",
    "TrainResult": "runners.train",
    # prompts
    "load_pixel_prompts": "method.pixel_prompts",
    "PixelPrompts": "method.pixel_prompts",
    "load_prompts": "method.prompts",
    # backbone
    "load_model": "tips.model",
    "build_model": "tips.model",
    "TipsModel": "tips.model",
    "PRESETS": "tips.presets",
    "get_preset": "tips.presets",
    # datasets
    "build_meta": "data.layouts",
    "detect_layout": "data.layouts",
    "read_meta": "data.meta",
    "write_meta": "data.meta",
    # errors
    "TipsomalyError": "errors",
    "InvalidOptionError": "errors",
    "OutputError": "errors",
    "UnknownModelError": "errors",
    "ConfigError": "tips.config",
    "CheckpointError": "tips.checkpoint",
    "WeightsUnavailableError": "tips.weights",
    "ChecksumError": "tips.weights",
    "PromptError": "method.prompts",
    "PixelPromptError": "method.pixel_prompts",
    "UnsafePickleError": "method.torch_pickle",
    "MetaError": "data.meta",
    "LayoutError": "data.layouts",
    "ImageLoadError": "data.images",
    "NoInputsError": "data.inputs",
    "TrainError": "runners.train",
    "OutputLockedError": "runners.lock",
    "ProfileError": "method.profile",
    "ProfileMismatchError": "method.profile",
    "NotCalibratedError": "method.profile",
    "ExportError": "deploy.metadata",
    "MissingExtraError": "errors",
    "DistributedError": "runners.distributed",
}

__all__ = ["__version__", *sorted(_EXPORTS)]


def __getattr__(name: str) -> Any:
    """Import a public name's module on first use (PEP 562) and cache the name here."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The module's attributes plus the public names not loaded yet (for completion)."""
    return sorted(set(globals()) | set(__all__))
