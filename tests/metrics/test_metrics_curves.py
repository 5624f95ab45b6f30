"""The curves the eval report draws: ROC and PRO, against direct loops over the definitions."""

from __future__ import annotations

import numpy as np
import pytest
from reference_impl import random_case
from scipy import ndimage
from sklearn.metrics import roc_curve as sk_roc_curve

from tipsomaly.metrics import aupro_mvtec, auroc, pro_curve, roc_curve
from tipsomaly.metrics.pro import _trapezoid_to, _zsad_area, aupro_zsad


@pytest.mark.parametrize("levels", [None, 5])  # 5: many ties
def test_roc_curve_is_sklearns_and_its_area_the_auroc(levels):
    rng = np.random.default_rng(3)
    labels = rng.random(300) < 0.3
    scores = rng.random(300) + 0.4 * labels
    if levels:
        scores = np.round(scores * levels) / levels
    fpr, tpr = roc_curve(scores, labels)
    want_fpr, want_tpr, _ = sk_roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, want_fpr)
    np.testing.assert_allclose(tpr, want_tpr)
    assert np.trapezoid(tpr, fpr) == pytest.approx(auroc(scores, labels), abs=1e-12)


def test_roc_curve_of_one_class_is_empty():
    fpr, tpr = roc_curve(np.arange(5.0), np.zeros(5))
    assert fpr.size == tpr.size == 0


def regions(masks: np.ndarray) -> list[tuple[int, np.ndarray]]:
    out = []
    for i, m in enumerate(masks):
        lab, n = ndimage.label(m, structure=np.ones((3, 3), dtype=int))
        out += [(i, lab == k) for k in range(1, n + 1)]
    return out


def test_zsad_pro_curve_is_the_definition_at_each_threshold():
    maps, masks = random_case(np.random.default_rng(0), 3, 24, None)
    fpr, pro = pro_curve(maps, masks, "zsad")
    lo, hi = maps.min(), maps.max()
    thresholds = np.arange(np.float64(lo), np.float64(hi), np.float64(hi - lo) / 200)
    thresholds = thresholds.astype(maps.dtype)
    assert fpr.size == pro.size == thresholds.size
    normal = masks == 0
    blobs = regions(masks)
    for k in (0, 17, 100, thresholds.size - 1):
        pred = maps > thresholds[k]
        assert fpr[k] == pytest.approx((pred & normal).sum() / normal.sum(), abs=1e-12)
        want = np.mean([pred[i][r].sum() / r.sum() for i, r in blobs])
        assert pro[k] == pytest.approx(want, abs=1e-12)
    assert _zsad_area(fpr, pro, 0.3) == aupro_zsad(maps, masks)


@pytest.mark.parametrize("levels", [None, 7])
def test_mvtec_pro_curve_is_the_definition_and_its_area_the_aupro(levels):
    maps, masks = random_case(np.random.default_rng(1), 2, 20, levels)
    fpr, pro = pro_curve(maps, masks, "mvtec")
    assert (fpr[0], pro[0], fpr[-1], pro[-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0)
    normal, blobs = masks == 0, regions(masks)
    levels_pos = np.unique(maps[masks > 0])  # the curve has a point at each anomalous score
    for t in levels_pos[:: max(1, levels_pos.size // 6)]:
        pred = maps >= t  # that point: (FPR, PRO) at "score >= t"
        x = (pred & normal).sum() / normal.sum()
        y = np.mean([pred[i][r].sum() / r.sum() for i, r in blobs])
        assert np.any(np.isclose(fpr, x, atol=1e-12) & np.isclose(pro, y, atol=1e-12))
    assert _trapezoid_to(fpr, pro, 0.3) / 0.3 == pytest.approx(aupro_mvtec(maps, masks), abs=1e-12)


@pytest.mark.parametrize("kind", ["zsad", "mvtec"])
def test_pro_curve_over_a_roi_counts_only_its_pixels(kind):
    maps, masks = random_case(np.random.default_rng(2), 2, 20, None)
    every = np.ones(maps.shape, dtype=bool)
    whole = pro_curve(maps, masks, kind)
    laid_out = pro_curve(maps, masks, kind, valid=every)
    for a, b in zip(whole, laid_out, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)
    half = every.copy()
    half[:, :, 10:] = False  # the right half left out: the curve of the left halves
    left = pro_curve(maps[:, :, :10], masks[:, :, :10], kind)
    for a, b in zip(left, pro_curve(maps, masks, kind, valid=half), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-12)


def test_pro_curve_without_a_region_is_none():
    maps = np.random.default_rng(0).random((2, 8, 8)).astype(np.float32)
    assert pro_curve(maps, np.zeros_like(maps), "zsad") is None
    assert pro_curve(maps, np.zeros_like(maps), "mvtec") is None
