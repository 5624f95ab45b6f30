"""Metric edge cases that random cases never hit, checked against direct definitions.

Expected values come from the slow loops in ``reference_impl`` (skimage regions, sklearn
``auc``), scikit-learn's ranking metrics or arithmetic written out in the test.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from reference_impl import aupro_mvtec_direct, aupro_zsad_loop, f1_max_sklearn
from sklearn.metrics import average_precision_score, roc_auc_score

from tipsomaly.metrics import (
    aupro_mvtec,
    aupro_zsad,
    image_metrics,
    label_regions,
    pixel_metrics,
    ranking_metrics,
)


def _fpr_boundary_case() -> tuple[np.ndarray, np.ndarray]:
    """One 4x5 image: the top two rows anomalous, the bottom ten pixels normal with scores
    0.0 .. 0.9. Every threshold in [0.6, 0.7) leaves exactly 3 of 10 normal pixels above it:
    FPR == 0.3 exactly, the limit the ZSAD definition excludes (FPR < 0.3)."""
    maps = np.zeros((1, 4, 5), np.float32)
    maps[0, 2:] = np.arange(10, dtype=np.float32).reshape(2, 5) / 10
    maps[0, :2] = np.array([[0.35, 0.45, 0.55, 0.65, 0.75], [0.85, 0.95, 1.0, 0.62, 0.68]])
    masks = np.zeros((1, 4, 5), np.float32)
    masks[0, :2] = 1
    return maps, masks


def test_zsad_aupro_excludes_points_at_exactly_the_fpr_limit():
    maps, masks = _fpr_boundary_case()
    # Guard: the case has thresholds whose FPR is exactly 0.3 (10 normal pixels, 3 above).
    lo, hi = maps.min(), maps.max()
    thresholds = np.arange(np.float64(lo), np.float64(hi), np.float64(hi - lo) / 200)
    normal = maps[masks == 0]
    fprs = np.array([(normal > np.float32(t)).sum() / normal.size for t in thresholds])
    assert np.count_nonzero(fprs == 0.3) > 5
    expected = aupro_zsad_loop(maps, masks)
    assert aupro_zsad(maps, masks) == pytest.approx(expected, abs=1e-12)
    assert pixel_metrics(maps, masks)["pixel_aupro"] == pytest.approx(expected, abs=1e-12)
    # Keeping FPR <= 0.3 would stretch the x axis to 0.3 and give another area.
    pros = []
    for t in thresholds[fprs <= 0.3]:
        pros.append(((maps > np.float32(t)) & (masks == 1)).sum() / masks.sum())
    x = fprs[fprs <= 0.3]
    x = (x - x.min()) / (x.max() - x.min())
    inclusive = -float(np.trapezoid(pros, x))
    assert abs(inclusive - expected) > 1e-3


def test_zsad_aupro_max_fpr_is_honoured():
    rng = np.random.default_rng(3)
    masks = np.zeros((2, 12, 12), np.float32)
    masks[0, 2:6, 3:8] = 1
    masks[1, 7:11, 1:4] = 1
    maps = (rng.random(masks.shape) + 0.4 * masks).astype(np.float32)
    default = aupro_zsad(maps, masks)
    assert aupro_zsad(maps, masks, max_fpr=0.3) == default
    assert aupro_zsad(maps, masks, max_fpr=0.1) != default
    assert aupro_zsad(maps, masks, num_thresholds=50) != default


def test_zsad_aupro_perfect_and_inverted_separation():
    masks = np.zeros((1, 8, 8), np.float32)
    masks[0, 2:5, 2:5] = 1
    perfect = masks + 0.01 * np.arange(64, dtype=np.float32).reshape(1, 8, 8)
    # Perfect maps: PRO is 1 at every kept threshold, so the area is exactly 1.
    assert aupro_zsad(perfect, masks) == pytest.approx(1.0, abs=1e-12)
    assert aupro_zsad(perfect, masks) == pytest.approx(aupro_zsad_loop(perfect, masks), abs=1e-12)
    inverted = -perfect
    assert aupro_zsad(inverted, masks) == pytest.approx(aupro_zsad_loop(inverted, masks), abs=1e-12)


def test_zsad_aupro_weights_regions_equally_not_pixels():
    """One large fully detected region and one small missed one: PRO = 1/2, not the pixel
    fraction. The maps are step-shaped so every kept threshold sees the same overlaps."""
    masks = np.zeros((1, 10, 10), np.float32)
    masks[0, 0:5, 0:5] = 1  # 25 pixels, scored high
    masks[0, 8, 8] = 1  # 1 pixel, scored like the background
    maps = np.where(masks == 1, 0.9, 0.1).astype(np.float32)
    maps[0, 8, 8] = 0.1
    maps[0, 6:, :3] = np.linspace(0.2, 0.8, 12, dtype=np.float32).reshape(4, 3)
    got = aupro_zsad(maps, masks)
    assert got == pytest.approx(aupro_zsad_loop(maps, masks), abs=1e-12)
    assert got == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize("max_fpr", [0.3, 0.1, 0.5])
def test_mvtec_aupro_at_the_interpolated_end_point(max_fpr):
    maps, masks = _fpr_boundary_case()
    expected = aupro_mvtec_direct(maps, masks, max_fpr=max_fpr)
    assert aupro_mvtec(maps, masks, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-12)


def test_mvtec_aupro_perfect_maps_give_one():
    masks = np.zeros((2, 6, 6), np.float32)
    masks[0, 1:3, 1:3] = 1
    masks[1, 4:, 4:] = 1
    maps = masks * 2 + np.random.default_rng(0).random(masks.shape).astype(np.float32)
    assert aupro_mvtec(maps, masks) == pytest.approx(1.0, abs=1e-12)
    assert pixel_metrics(maps, masks, aupro="mvtec")["pixel_aupro"] == pytest.approx(1.0)


def test_pixel_metrics_equal_sklearn_on_the_flattened_maps():
    maps, masks = _fpr_boundary_case()
    got = pixel_metrics(maps, masks)
    assert got["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()))
    assert got["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()))
    assert got["pixel_f1-max"] == pytest.approx(f1_max_sklearn(masks, maps), abs=1e-12)


def test_image_metrics_by_hand():
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5])
    labels = np.array([1, 0, 1, 0, 0])
    got = image_metrics(scores, labels)
    # AUROC: anomalous 0.9 beats 3 normals, 0.7 beats 2 of them: 5 of 6 pairs.
    assert got["image_auroc"] == pytest.approx(5 / 6)
    # AP: precision 1/1 at the first anomalous, 2/3 at the second, averaged.
    assert got["image_ap"] == pytest.approx((1 + 2 / 3) / 2)
    # F1-max: threshold 0.7 gives P = 2/3, R = 1 -> 0.8; threshold 0.9 gives P = 1, R = 1/2.
    assert got["image_f1-max"] == pytest.approx(0.8)


def test_ties_between_classes_count_half_and_share_precision():
    scores = np.array([0.5, 0.5, 0.5, 0.2])
    labels = np.array([1, 0, 0, 0])
    got = ranking_metrics(scores, labels)
    assert got["auroc"] == pytest.approx((1 * 0.5 + 0.5 + 1) / 3)  # two ties, one win
    assert got["ap"] == pytest.approx(1 / 3)
    assert got["f1-max"] == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.float16])
def test_ranking_metrics_for_other_score_dtypes(dtype):
    rng = np.random.default_rng(9)
    labels = rng.random(300) < 0.4
    scores = (rng.integers(0, 50, 300) + 10 * labels).astype(dtype)
    got = ranking_metrics(scores, labels)
    assert got["auroc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)
    assert got["ap"] == pytest.approx(average_precision_score(labels, scores), abs=1e-12)
    assert got["f1-max"] == pytest.approx(f1_max_sklearn(labels, scores), abs=1e-12)


def test_undefined_metrics_are_nan_with_a_reason(caplog):
    masks = np.zeros((1, 4, 4), np.float32)
    masks[0, 0, 0] = 1
    with caplog.at_level(logging.WARNING, logger="tipsomaly.metrics"):
        # Only the anomalous pixel differs: every threshold has FPR 0, a single x value.
        maps = np.zeros((1, 4, 4), np.float32)
        maps[0, 0, 0] = 1.0
        assert math.isnan(aupro_zsad(maps, masks))
    assert "same FPR" in caplog.text or "fewer than 2" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="tipsomaly.metrics"):
        # Anomalous pixels lowest, normals spread: only the last threshold has FPR < 0.3.
        maps = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 4, 4)
        assert math.isnan(aupro_zsad(maps, masks, num_thresholds=2))
    assert "fewer than 2 of the" in caplog.text


def test_label_regions_counts_diagonal_neighbours_and_images_separately():
    masks = np.zeros((2, 5, 5), bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # diagonal: one region
    masks[0, 3, 3] = True  # a second region
    masks[1, 0, 0] = True  # the same place in the next image: a third
    labels, count = label_regions(masks)
    assert count == 3
    assert labels[0, 0, 0] == labels[0, 1, 1] != labels[0, 3, 3]
    assert labels[1, 0, 0] not in (labels[0, 0, 0], labels[0, 3, 3], 0)
    assert labels.dtype == np.int32 and (labels[~masks] == 0).all()
