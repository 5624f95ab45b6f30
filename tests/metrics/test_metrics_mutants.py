"""Cases written to kill the mutants that survived the metric tests (mutmut, issue 9).

Each test states the behaviour it pins; expected values come from the direct definitions in
``reference_impl`` or are written out by hand.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from reference_impl import aupro_mvtec_direct, aupro_zsad_loop

from tipsomaly.metrics import (
    _arrays,
    aupro_mvtec,
    aupro_zsad,
    image_metrics,
    label_regions,
    pixel_metrics,
    ranking_metrics,
)
from tipsomaly.metrics.pro import _sort_with_payload, _ThresholdIndex


def _messages(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("tipsomaly.metrics.")]


# -- the warnings say which metric is undefined and why -----------------------------------------
def test_image_and_pixel_warnings_name_the_metric_and_the_reason(caplog):
    with caplog.at_level(logging.WARNING, logger="tipsomaly.metrics"):
        image_metrics(np.array([0.1, 0.2]), np.array([0, 0]))
    assert _messages(caplog) == [
        f"image {name} is undefined (no anomalous samples); returning nan"
        for name in ("auroc", "ap", "f1-max")
    ]
    caplog.clear()
    maps = np.random.default_rng(0).random((1, 4, 4)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="tipsomaly.metrics"):
        pixel_metrics(maps, np.ones((1, 4, 4)), aupro="mvtec")
    assert _messages(caplog) == [
        *(
            f"pixel {name} is undefined (no normal samples); returning nan"
            for name in ("auroc", "ap", "f1-max")
        ),
        "AUPRO is undefined (the masks have no normal pixel); returning nan",
    ]


ZSAD_UNDEFINED = [
    ("no-region", np.zeros((1, 4, 4)), "the masks have no anomalous region"),
    ("no-normal", np.ones((1, 4, 4)), "the masks have no normal pixel"),
]


@pytest.mark.parametrize("kind", ["zsad", "mvtec"])
@pytest.mark.parametrize("case,masks,reason", ZSAD_UNDEFINED, ids=[c[0] for c in ZSAD_UNDEFINED])
def test_aupro_warnings_say_why(caplog, kind, case, masks, reason):
    maps = np.arange(16, dtype=np.float32).reshape(1, 4, 4)
    function = aupro_zsad if kind == "zsad" else aupro_mvtec
    with caplog.at_level(logging.WARNING, logger="tipsomaly.metrics"):
        assert math.isnan(function(maps, masks))
    assert _messages(caplog) == [f"AUPRO is undefined ({reason}); returning nan"]


def test_zsad_warnings_for_equal_scores_and_too_few_points(caplog):
    masks = np.zeros((1, 4, 4))
    masks[0, 0, 0] = 1
    with caplog.at_level(logging.WARNING, logger="tipsomaly.metrics"):
        aupro_zsad(np.ones((1, 4, 4), np.float32), masks)
        maps = np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 4, 4)
        aupro_zsad(maps, masks, num_thresholds=2)  # thresholds 0, 0.5: FPR 1 and ~0.53
        only = np.zeros((1, 4, 4), np.float32)
        only[0, 0, 0] = 1.0  # every kept threshold has FPR 0
        aupro_zsad(only, masks)
    assert _messages(caplog) == [
        "AUPRO is undefined (all scores are equal); returning nan",
        "AUPRO is undefined (fewer than 2 of the 2 thresholds have FPR < 0.3); returning nan",
        "AUPRO is undefined (all thresholds with FPR < 0.3 have the same FPR); returning nan",
    ]


# -- errors name the argument --------------------------------------------------------------------
def test_errors_name_the_masks_and_the_maps():
    with pytest.raises(ValueError, match=r"^masks must be binary"):
        label_regions(np.array([[0, 2]]))
    with pytest.raises(TypeError, match=r"^masks must be a numeric array"):
        label_regions(np.array([[None]], dtype=object))
    with pytest.raises(ValueError, match=r"^masks must have shape \(H, W\) or \(N, H, W\)"):
        label_regions(np.zeros((1, 1, 2, 2)))
    # Constant maps: the masks are still checked, and named.
    with pytest.raises(ValueError, match=r"^masks must be binary"):
        aupro_zsad(np.ones((1, 3, 3)), np.full((1, 3, 3), 2))
    with pytest.raises(ValueError, match=r"^masks must be binary"):
        aupro_zsad(np.arange(9.0).reshape(1, 3, 3), np.full((1, 3, 3), 2))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_zsad_refuses_non_finite_float32_maps(bad):
    maps = np.zeros((1, 3, 3), np.float32)
    maps[0, 1, 1] = bad
    masks = np.eye(3)[None]
    with pytest.raises(ValueError, match=r"^maps contains NaN or infinite values"):
        aupro_zsad(maps, masks)


# -- labelling -----------------------------------------------------------------------------------
def test_region_labels_are_one_to_count_in_scan_order():
    masks = np.zeros((2, 4, 6), bool)
    masks[0, 0, 4:] = True  # first in scan order
    masks[0, 2:, 0] = True
    masks[1, 1, 1] = True
    labels, count = label_regions(masks)
    assert count == 3 and labels.dtype == np.int32
    assert labels[0, 0, 4] == 1 and labels[0, 2, 0] == 2 and labels[1, 1, 1] == 3
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2, 3]


# -- AUPRO where the highest score is a normal pixel --------------------------------------------
def _top_score_normal() -> tuple[np.ndarray, np.ndarray]:
    """The top scores are normal pixels, so the curves do not start at FPR 0: the ZSAD curve's
    smallest kept FPR is above 0 and the MVTec curve's first step is horizontal."""
    rng = np.random.default_rng(21)
    masks = np.zeros((2, 9, 9), np.float32)
    masks[0, 1:4, 1:5] = 1
    masks[1, 5:8, 4:7] = 1
    maps = (rng.random(masks.shape) * 0.6 + 0.3 * masks).astype(np.float32)
    maps[0, 8, 0:4] = [1.5, 1.4, 1.3, 1.2]  # normal pixels above every anomalous one
    return maps, masks


def test_zsad_aupro_when_the_top_scores_are_normal():
    maps, masks = _top_score_normal()
    expected = aupro_zsad_loop(maps, masks)
    assert aupro_zsad(maps, masks) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 1.0])
def test_mvtec_aupro_when_the_top_scores_are_normal(max_fpr):
    maps, masks = _top_score_normal()
    expected = aupro_mvtec_direct(maps, masks, max_fpr=max_fpr)
    assert aupro_mvtec(maps, masks, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-12)


def test_mvtec_aupro_with_a_single_normal_pixel():
    masks = np.ones((1, 3, 3), np.float32)
    masks[0, 2, 2] = 0
    maps = np.arange(9, dtype=np.float32).reshape(1, 3, 3) / 10
    maps[0, 2, 2] = 0.45
    expected = aupro_mvtec_direct(maps, masks)
    assert not math.isnan(expected)
    assert aupro_mvtec(maps, masks) == pytest.approx(expected, abs=1e-12)


def test_zsad_aupro_with_exactly_two_kept_points():
    masks = np.zeros((1, 4, 5), np.float32)
    masks[0, 0, :] = 1
    maps = np.zeros((1, 4, 5), np.float32)
    maps[0, 0] = [0.9, 0.8, 0.95, 0.7, 0.6]
    normal = np.concatenate([np.linspace(0.0, 0.39, 11), [0.5, 0.6, 0.75, 0.8]])
    maps[0, 1:] = normal.astype(np.float32).reshape(3, 5)
    # 4 thresholds 0.0, 0.2375, 0.475, 0.7125: FPR 14/15, 8/15, 4/15, 2/15 -> two kept.
    expected = aupro_zsad_loop(maps, masks, max_step=4)
    assert not math.isnan(expected)
    assert aupro_zsad(maps, masks, num_thresholds=4) == pytest.approx(expected, abs=1e-12)


# -- chunked passes ------------------------------------------------------------------------------
def test_aupro_with_more_images_than_rows_in_small_chunks(monkeypatch):
    """Chunks run over the images (first axis), also when there are more images than rows."""
    rng = np.random.default_rng(8)
    masks = np.zeros((24, 3, 4), np.float32)
    masks[::2, 1, 1:3] = 1
    maps = (rng.random(masks.shape) + 0.5 * masks).astype(np.float32)
    expected_zsad = aupro_zsad_loop(maps, masks)
    expected_mvtec = aupro_mvtec_direct(maps, masks)
    monkeypatch.setattr(_arrays, "CHUNK_ELEMENTS", 12)  # one image per chunk
    assert aupro_zsad(maps, masks) == pytest.approx(expected_zsad, abs=1e-12)
    assert aupro_mvtec(maps, masks) == pytest.approx(expected_mvtec, abs=1e-12)
    monkeypatch.setattr(_arrays, "CHUNK_ELEMENTS", 5)  # area sums over several chunks
    assert aupro_mvtec(maps, masks) == pytest.approx(expected_mvtec, abs=1e-12)
    assert aupro_mvtec(maps, masks, max_fpr=1.0) == pytest.approx(
        aupro_mvtec_direct(maps, masks, max_fpr=1.0), abs=1e-12
    )


def test_sorted_float32_values_have_no_negative_zero():
    values = np.array([0.5, -0.0, 0.0, -0.25, -0.0], np.float32)
    payload = np.arange(5, dtype=np.int32)
    sorted_values, sorted_payload = _sort_with_payload(values, payload)
    assert sorted_values.tolist() == [-0.25, 0.0, 0.0, 0.0, 0.5]
    assert not np.signbit(sorted_values[1:4]).any()  # "+ 0.0 turns -0.0 into +0.0"
    assert sorted(sorted_payload[1:4].tolist()) == [1, 2, 4]


# -- input checks of the score metrics -----------------------------------------------------------
def test_score_input_errors_name_scores_and_labels():
    with pytest.raises(TypeError, match=r"^scores must be a numeric array"):
        ranking_metrics(np.array([None, 1], dtype=object), np.array([0, 1]))
    with pytest.raises(TypeError, match=r"^labels must be a numeric array"):
        ranking_metrics(np.array([0.1, 0.2]), np.array([None, 1], dtype=object))
    with pytest.raises(TypeError, match=r"^scores must hold real numbers"):
        ranking_metrics(np.array([True, False]), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"^scores and labels must have the same shape"):
        ranking_metrics(np.zeros(2), np.zeros(3))
    with pytest.raises(ValueError, match=r"^scores and labels are empty$"):
        ranking_metrics(np.zeros(0), np.zeros(0))


def test_scalar_and_single_scores_are_one_sample():
    for scores, labels in ((np.float64(0.5), 1), (np.array([0.5]), np.array([1]))):
        values = ranking_metrics(scores, labels)
        assert set(values) == {"auroc", "ap", "f1-max"}
        assert all(math.isnan(v) for v in values.values())  # one class only


def test_threshold_index_on_irregular_thresholds_falls_back_to_binary_search():
    thresholds = np.array([0.0, 0.001, 0.5, 0.75, 100.0], np.float64)
    values = np.array([-1.0, 0.0, 0.0005, 0.001, 0.3, 0.5, 0.6, 0.75, 50.0, 100.0, 200.0])
    got = _ThresholdIndex(thresholds)(values)
    np.testing.assert_array_equal(got, np.searchsorted(thresholds, values, side="left"))
