"""Datasets: image loading and preprocessing (:mod:`~tipsomaly.data.images`, the one place that
decides it), ``meta.json``, native layouts, torch datasets, input paths and regions of interest.

This layer imports only :mod:`tipsomaly.errors` and :mod:`tipsomaly.files` below it
(``tests/test_layers.py`` checks the order), never :mod:`tipsomaly.metrics` beside it nor a
layer above. PyTorch is imported only by :mod:`~tipsomaly.data.dataset` and by the tensor
helpers of :mod:`~tipsomaly.data.images` when called: reading ``meta.json``, scanning a layout
or expanding inputs does not import it.
"""
