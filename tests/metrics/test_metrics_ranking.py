"""AUROC, AP and F1-max against scikit-learn, with ties, chunking and pixel-scale arrays."""

from __future__ import annotations

import numpy as np
import pytest
from reference_impl import f1_max_sklearn
from sklearn.metrics import average_precision_score, roc_auc_score

from tipsomaly.metrics import _arrays, _split, auroc, average_precision, f1_max, ranking_metrics


def _sklearn(scores, labels):
    return {
        "auroc": roc_auc_score(labels.ravel(), scores.ravel()),
        "ap": average_precision_score(labels.ravel(), scores.ravel()),
        "f1-max": f1_max_sklearn(labels, scores),
    }


@pytest.mark.parametrize("seed", range(40))
def test_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 400))
    decimals = int(rng.integers(0, 3))  # 0 decimals: almost everything tied
    dtype = [np.float32, np.float64, np.int64][seed % 3]
    labels = rng.random(n) < rng.uniform(0.05, 0.95)
    labels[:2] = [True, False]
    scores = np.round(rng.random(n) + 0.3 * labels, decimals)
    scores = (scores * 10**decimals).astype(dtype) if dtype is np.int64 else scores.astype(dtype)
    got = ranking_metrics(scores, labels.astype(int))
    for name, value in _sklearn(scores, labels).items():
        assert got[name] == pytest.approx(value, abs=1e-12), name


def test_single_metric_functions():
    rng = np.random.default_rng(0)
    labels = rng.random(500) < 0.3
    scores = np.round(rng.random(500) + labels * 0.2, 2)
    ref = _sklearn(scores, labels)
    assert auroc(scores, labels) == pytest.approx(ref["auroc"], abs=1e-12)
    assert average_precision(scores, labels) == pytest.approx(ref["ap"], abs=1e-12)
    assert f1_max(scores, labels) == pytest.approx(ref["f1-max"], abs=1e-12)


@pytest.mark.parametrize("decimals", [2, 4, None])
def test_pixel_scale_matches_sklearn(decimals):
    rng = np.random.default_rng(7)
    masks = rng.random((8, 256, 256)) < 0.04
    maps = (rng.random(masks.shape) + 0.4 * masks).astype(np.float32)
    if decimals is not None:
        maps = np.round(maps, decimals).astype(np.float32)
    got = ranking_metrics(maps, masks)
    for name, value in _sklearn(maps, masks).items():
        assert got[name] == pytest.approx(value, abs=1e-10), name


def test_chunked_and_blocked_paths_agree(monkeypatch):
    rng = np.random.default_rng(3)
    masks = rng.random((5, 40, 40)) < 0.2
    maps = np.round(rng.random(masks.shape) + 0.3 * masks, 2).astype(np.float32)
    whole = ranking_metrics(maps, masks)
    monkeypatch.setattr(_arrays, "CHUNK_ELEMENTS", 777)
    monkeypatch.setattr(_split, "_SEARCH_BLOCK", 5)
    chunked = ranking_metrics(maps, masks)
    assert chunked == pytest.approx(whole, abs=1e-13)
    for name, value in _sklearn(maps, masks).items():
        assert chunked[name] == pytest.approx(value, abs=1e-12), name


@pytest.mark.parametrize("side", ["left", "right"])
def test_sorted_searchsorted(monkeypatch, side):
    monkeypatch.setattr(_split, "_SEARCH_BLOCK", 7)
    rng = np.random.default_rng(1)
    haystack = np.sort(rng.integers(0, 50, 300))
    needles = np.sort(rng.integers(-5, 60, 123))
    got = _split.sorted_searchsorted(haystack, needles, side)
    np.testing.assert_array_equal(got, np.searchsorted(haystack, needles, side=side))


def test_signed_zero_and_extremes_are_ties():
    scores = np.array([-0.0, 0.0, 1.0, -1.0], dtype=np.float32)
    labels = np.array([1, 0, 1, 0])
    assert auroc(scores, labels) == pytest.approx(roc_auc_score(labels, scores))
