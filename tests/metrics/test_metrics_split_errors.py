"""The score split behind every ranking metric refuses non-finite scores and non-binary labels,
naming the argument (kills mutants of ``metrics._split`` that skip or rename these checks)."""

from __future__ import annotations

import numpy as np
import pytest

from tipsomaly.metrics import image_metrics, ranking_metrics


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_scores_are_refused_by_name(bad, dtype):
    scores = np.array([0.1, 0.2, bad, 0.4], dtype=dtype)
    labels = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match=r"^scores contains NaN or infinite values$"):
        ranking_metrics(scores, labels)
    with pytest.raises(ValueError, match=r"^scores contains NaN or infinite values$"):
        image_metrics(scores, labels)


def test_non_binary_labels_are_refused_by_name():
    scores = np.array([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"^labels must be binary"):
        ranking_metrics(scores, np.array([0, 1, 2, 1]))
    maps = np.random.default_rng(0).random((2, 4, 4))
    with pytest.raises(ValueError, match=r"^labels must be binary|^masks must be binary"):
        ranking_metrics(maps, np.full((2, 4, 4), 3))
