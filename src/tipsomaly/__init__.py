"""tipsomaly: zero-shot visual anomaly detection (TipsOmaly, ICASSP 2026) on the TIPS backbone.

Layers, from the bottom up (each imports only from those below it):

- :mod:`tipsomaly.tips`    the TIPS backbone: towers, tokenizer, presets, weights.
- :mod:`tipsomaly.method`  the TipsOmaly method: prompts, pixel prompts, maps, detector.
- :mod:`tipsomaly.data`, :mod:`tipsomaly.metrics`  datasets and evaluation metrics.
- :mod:`tipsomaly.cli`     the ``tipsomaly`` command.
"""

__version__ = "0.1.0"
