"""AUPRO (ZSAD and MVTec definitions) against slow direct implementations, and labelling."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
from reference_impl import aupro_mvtec_direct, aupro_zsad_loop, random_case
from scipy import ndimage

import tipsomaly.metrics.pro as pro_module
from tipsomaly.metrics import _arrays, aupro_mvtec, aupro_zsad, label_regions, zsad_thresholds
from tipsomaly.metrics.pro import _sort_with_payload, _ThresholdIndex, _trapezoid_to


@pytest.mark.parametrize("seed", range(12))
def test_aupro_mvtec_matches_direct_definition(seed):
    rng = np.random.default_rng(seed)
    levels = [None, 5, 20][seed % 3]  # None: (almost) no ties; 5: heavy ties
    maps, masks = random_case(
        rng, n=int(rng.integers(1, 4)), size=int(rng.integers(6, 20)), levels=levels
    )
    for max_fpr in (0.3, 0.05, 1.0):
        expected = aupro_mvtec_direct(maps, masks, max_fpr=max_fpr)
        assert aupro_mvtec(maps, masks, max_fpr=max_fpr) == pytest.approx(expected, abs=1e-12)


def test_aupro_mvtec_float64_maps_use_argsort_path():
    rng = np.random.default_rng(5)
    maps, masks = random_case(rng, n=3, size=12, levels=7)
    maps64 = maps.astype(np.float64) - 0.5  # negative values too
    assert aupro_mvtec(maps64, masks) == pytest.approx(aupro_mvtec_direct(maps64, masks), abs=1e-12)


@pytest.mark.parametrize("seed", range(12))
def test_aupro_zsad_matches_reference_loop(seed):
    rng = np.random.default_rng(100 + seed)
    levels = [None, 7, 50][seed % 3]
    maps, masks = random_case(
        rng, n=int(rng.integers(1, 4)), size=int(rng.integers(8, 24)), levels=levels
    )
    try:
        expected = aupro_zsad_loop(maps, masks)
    except ValueError:  # the reference fails: fewer than two points with FPR < 0.3
        expected = float("nan")
    got = aupro_zsad(maps, masks)
    assert got == pytest.approx(expected, abs=1e-12, nan_ok=True)


def test_aupro_zsad_all_zero_pro_is_negative_zero():
    # Anomalous pixels score lowest: at every threshold with FPR < 0.3 the PRO is 0, and the
    # reference's sklearn.auc(decreasing x) returns -0.0 (golden metal_nut).
    rng = np.random.default_rng(0)
    masks = np.zeros((2, 16, 16), dtype=np.float32)
    masks[0, 2:6, 2:6] = 1
    maps = rng.random(masks.shape).astype(np.float32) + 1.0
    maps[masks == 1] = 0.0
    value = aupro_zsad(maps, masks)
    assert value == 0.0 and np.signbit(value)


def test_zsad_thresholds_count_and_dtype():
    for lo, hi in [(0.19033805, 0.8119766), (0.3, 0.7), (0.0, 1.0)]:
        th = zsad_thresholds(np.float32(lo), np.float32(hi))
        assert th.dtype == np.float32 and th.size in (200, 201)
        assert th[0] == np.float32(lo) and th[-1] < np.float32(hi)
    assert zsad_thresholds(np.float64(0), np.float64(1), 10).size == 10


def test_trapezoid_to_interpolates_end_point():
    x = np.array([0.0, 0.2, 0.2, 0.4, 1.0])
    y = np.array([0.0, 0.5, 0.6, 1.0, 1.0])
    # 0.2*0.5/2 + 0 + segment to 0.3 where y = 0.8: 0.1*(0.6+0.8)/2
    assert _trapezoid_to(x, y, 0.3) == pytest.approx(0.05 + 0.07)
    assert _trapezoid_to(x, y, 0.2) == pytest.approx(0.05)


def test_sort_with_payload_float32():
    rng = np.random.default_rng(2)
    values = np.round(rng.normal(size=1000), 1).astype(np.float32)
    values[:3] = [-0.0, 0.0, -0.0]
    payload = rng.integers(0, 2**31 - 1, 1000).astype(np.int32)
    sorted_values, sorted_payload = _sort_with_payload(values, payload)
    np.testing.assert_array_equal(sorted_values, np.sort(values))
    # same multiset of (value, payload) pairs
    got = sorted(zip(sorted_values.tolist(), sorted_payload.tolist(), strict=True))
    want = sorted(zip((values + np.float32(0)).tolist(), payload.tolist(), strict=True))
    assert got == want


@pytest.mark.parametrize("seed", range(30))
def test_label_regions_matches_scipy(seed, monkeypatch):
    rng = np.random.default_rng(seed)
    if seed % 2:
        monkeypatch.setattr(_arrays, "CHUNK_ELEMENTS", 50)  # several images per chunk or one
    n, h, w = rng.integers(1, 5), rng.integers(1, 25), rng.integers(1, 25)
    masks = rng.random((n, h, w)) < rng.uniform(0.1, 0.9)
    labels, count = label_regions(masks)
    expected_count = 0
    pairs = set()
    for i in range(n):
        ref, k = ndimage.label(masks[i], structure=np.ones((3, 3), dtype=int))
        pairs |= set(
            zip(
                labels[i][masks[i]].tolist(), (ref[masks[i]] + expected_count).tolist(), strict=True
            )
        )
        expected_count += k
    assert count == expected_count
    assert len(pairs) == count  # a one-to-one correspondence of regions
    assert np.array_equal(labels > 0, masks)


def test_label_regions_single_image_and_spiral():
    spiral = np.zeros((9, 9), dtype=bool)
    spiral[0, :] = spiral[:, 8] = spiral[8, :] = spiral[2:, 0] = spiral[2, :7] = True
    spiral[4, 2:] = spiral[4:7, 2] = spiral[6, 2:7] = True
    labels, count = label_regions(spiral)
    assert labels.shape == (9, 9)
    assert count == ndimage.label(spiral, structure=np.ones((3, 3)))[1]
    diagonal = np.eye(6, dtype=bool)  # 8-connected: one region
    assert label_regions(diagonal)[1] == 1


# Every (dtype, span) pair gives distinct scores: float16 cannot hold a span of 2e-6 around
# 0.25 (it would be constant), and integer scores have one case of their own.
FLOAT_CASES = [(dtype, span) for dtype in (np.float32, np.float64) for span in (1.0, 1e3, 2e-6)] + [
    (np.float16, 1.0),
    (np.float16, 1e3),
]


def _check_threshold_index(values: np.ndarray) -> None:
    lo, hi = values.min(), values.max()
    assert lo < hi
    thresholds = zsad_thresholds(lo, hi)
    values = np.concatenate([values, thresholds.astype(values.dtype), [lo, hi]])
    got = _ThresholdIndex(thresholds)(values)
    np.testing.assert_array_equal(got, np.searchsorted(thresholds, values, side="left"))


@pytest.mark.parametrize(("dtype", "span"), FLOAT_CASES)
def test_threshold_index_is_exact(dtype, span, monkeypatch):
    monkeypatch.setattr(pro_module, "_INDEX_BLOCK", 999)  # several blocks
    rng = np.random.default_rng(4)
    _check_threshold_index((rng.random(20000) * span + 0.25).astype(dtype))


def test_threshold_index_is_exact_for_integer_scores(monkeypatch):
    monkeypatch.setattr(pro_module, "_INDEX_BLOCK", 999)
    rng = np.random.default_rng(4)
    _check_threshold_index(rng.integers(-50, 500, 20000).astype(np.int32))


def test_aupro_zsad_streams_in_bounded_memory(monkeypatch):
    monkeypatch.setattr(_arrays, "CHUNK_ELEMENTS", 1 << 14)
    maps, masks = random_case(np.random.default_rng(1), n=64, size=128, levels=None)
    tracemalloc.start()
    aupro_zsad(maps, masks)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 0.25 * maps.nbytes
