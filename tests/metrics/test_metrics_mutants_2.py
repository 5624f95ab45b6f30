"""More cases from mutation testing of the metrics (mutmut, issue 9; see docs/mutation-testing.md).

Each test states the behaviour it pins and names the mutants it kills.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from reference_impl import aupro_mvtec_direct, aupro_zsad_loop

from tipsomaly.metrics import aupro_mvtec, aupro_zsad, ranking_metrics, zsad_thresholds
from tipsomaly.metrics.pro import _ThresholdIndex
from tipsomaly.metrics.regions import foreground_components


def _case(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    maps = rng.random((3, 12, 12)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[0, 2:6, 3:7] = True
    masks[1, 8:11, 1:3] = True
    maps[masks] += 0.3  # anomalous pixels score higher, with overlap
    return maps, masks


def _dirty(shape, dtype=float, *args, **kwargs):
    """What ``np.empty`` may hand back: memory that is not zero (NaN, or the largest integer)."""
    dtype = np.dtype(dtype)
    fill = np.nan if dtype.kind in "fc" else np.iinfo(dtype).max if dtype.kind in "iu" else 1
    return np.full(shape, fill, dtype=dtype)


def _dirty_like(prototype, dtype=None, *args, **kwargs):
    return _dirty(np.shape(prototype), dtype or np.asarray(prototype).dtype)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aupro_never_reads_unwritten_memory(monkeypatch, seed):
    """Every point of the curve is written before it is used: the result is the same when
    ``np.empty`` returns NaN-filled memory. Kills pro.aupro_mvtec_from_split mutants 92
    (``y[0]`` left unset) and 102 (``x[0]`` left unset), which pass whenever fresh memory
    happens to be zero."""
    maps, masks = _case(seed)
    clean = (aupro_mvtec(maps, masks), aupro_zsad(maps, masks))
    assert clean[0] == pytest.approx(aupro_mvtec_direct(maps, masks), abs=1e-9)
    monkeypatch.setattr(np, "empty", _dirty)
    monkeypatch.setattr(np, "empty_like", _dirty_like)
    assert (aupro_mvtec(maps, masks), aupro_zsad(maps, masks)) == clean


@pytest.mark.parametrize("max_fpr", [1.5, 0.0, -0.1])
def test_aupro_mvtec_refuses_an_fpr_limit_outside_zero_one(max_fpr):
    maps, masks = _case()
    with pytest.raises(ValueError, match="max_fpr"):
        aupro_mvtec(maps, masks, max_fpr=max_fpr)


# -- _ThresholdIndex: exact, and fast on the thresholds it is built for ------------------------
def _binary_searches(monkeypatch) -> list[int]:
    """Counts the calls of ``np.searchsorted`` (the index's slow path) from now on."""
    calls = []
    searchsorted = np.searchsorted

    def counting(*args, **kwargs):
        calls.append(1)
        return searchsorted(*args, **kwargs)

    monkeypatch.setattr(np, "searchsorted", counting)
    return calls


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(("lo", "hi"), [(0.25, 0.75), (-3.0, 5.0), (2.0, 2.5)])
def test_threshold_index_guesses_evenly_spaced_thresholds_without_a_binary_search(
    monkeypatch, dtype, lo, hi
):
    """The ZSAD thresholds are evenly spaced, so the guess from the spacing, corrected at most
    a few times, is exact: no binary search (the index's reason to exist, "about 4x faster").
    Kills the _ThresholdIndex mutants that break the guess (wrong ``lo``, ``span``, ``scale``,
    clip, correction step or sentinel), which stay correct only through the fallback."""
    rng = np.random.default_rng(5)
    values = rng.uniform(lo, hi, 4000).astype(dtype)
    values[:2] = lo, hi  # the extremes, as in aupro_zsad (the thresholds start at the minimum)
    thresholds = zsad_thresholds(dtype(lo), dtype(hi))
    values = np.concatenate([values, thresholds, np.nextafter(thresholds, dtype(np.inf))])
    values = np.clip(values, dtype(lo), dtype(hi))
    expected = np.searchsorted(thresholds, values, side="left")
    index = _ThresholdIndex(thresholds)
    calls = _binary_searches(monkeypatch)
    got = index(values)
    assert calls == []
    np.testing.assert_array_equal(got, expected)


def test_threshold_index_falls_back_to_binary_search_when_the_guess_is_far_off(monkeypatch):
    """Thresholds far from evenly spaced (one outlier stretches the span): the guess is many
    steps off, the corrections give up and the binary search answers. Kills the fallback
    mutants (``searchsorted`` on None, without values, ``side`` misspelt) and
    ``self.thresholds = None``, which the evenly spaced cases never reach, and the clip's lower
    bound (``None``: a value far below the first threshold indexes out of range)."""
    thresholds = np.array([*range(10), 1000.0])
    values = np.array([-1e6, -1.0, 0.0, 0.5, 4.0, 8.5, 9.0, 9.5, 500.0, 1000.0, 2000.0])
    expected = np.searchsorted(thresholds, values, side="left")
    index = _ThresholdIndex(thresholds)
    calls = _binary_searches(monkeypatch)
    np.testing.assert_array_equal(index(values), expected)
    assert calls == [1]


def test_zsad_with_a_single_threshold(caplog):
    """``num_thresholds=1``: one threshold (the minimum), a zero span. Kills the mutants of the
    ``span > 0`` guard (``>= 0``, ``or True``), which divide by zero."""
    maps, masks = _case()
    assert zsad_thresholds(maps.min(), maps.max(), 1).tolist() == [maps.min()]
    with caplog.at_level(logging.WARNING, logger="tipsomaly.metrics"):
        assert np.isnan(aupro_zsad(maps, masks, num_thresholds=1))  # one point: undefined
    assert "fewer than 2 of the 1 thresholds" in caplog.text


@pytest.mark.parametrize("dtype", [np.int64, np.uint8, np.int32])
def test_zsad_thresholds_of_integer_scores_stay_float64(dtype):
    """Integer scores keep fractional float64 thresholds ("float64 otherwise"); cast to the
    scores' integer dtype they would collapse. Kills zsad_thresholds ``issubdtype(None, ...)``."""
    got = zsad_thresholds(dtype(0), dtype(10), 200)
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, np.arange(0.0, 10.0, 0.05))


def test_zsad_aupro_of_integer_maps_uses_fractional_thresholds():
    maps, masks = _case()
    maps = np.round(maps * 20).astype(np.int64)
    assert aupro_zsad(maps, masks) == pytest.approx(aupro_zsad_loop(maps, masks), abs=1e-12)


def test_ranking_warnings_have_no_prefix_by_default(caplog):
    """Kills ranking_from_split's default ``what = "XXXX"``."""
    with caplog.at_level(logging.WARNING, logger="tipsomaly.metrics"):
        ranking_metrics(np.array([0.1, 0.2]), np.array([1, 1]))
    assert [r.getMessage() for r in caplog.records] == [
        f"{name} is undefined (no normal samples); returning nan"
        for name in ("auroc", "ap", "f1-max")
    ]


# -- input errors of the map metrics name the argument and the shape ---------------------------
@pytest.mark.parametrize("metric", [aupro_mvtec, aupro_zsad])
def test_map_input_errors_name_maps_and_masks(metric):
    """Kills the as_maps mutants of the argument names and messages (None, "XXmapsXX",
    "MAPS", "XXmasksXX", "MASKS", ``np.shape(None)``), check_real's and binary_chunk's
    ``issubdtype(None, ...)`` and ``and``/``or`` swaps (complex input accepted) and the value
    binary_chunk quotes (the first bad one, not the first zero)."""
    ok = np.zeros((1, 2, 2))
    cases = [
        (np.array([[None]], dtype=object), ok[0, :1, :1], TypeError,
         "maps must be a numeric array, got an object array"),
        (ok[0, :1, :1], np.array([[None]], dtype=object), TypeError,
         "masks must be a numeric array, got an object array"),
        (ok.astype(bool), ok, TypeError,
         "maps must hold real numbers (integer or floating), got bool"),
        (ok.astype(complex), ok, TypeError,
         "maps must hold real numbers (integer or floating), got complex128"),
        (ok, ok.astype(complex), TypeError,
         "masks must be bool or numeric 0/1, got complex128"),
        (np.arange(4.0).reshape(1, 2, 2), np.array([[[0, 1], [0, 255]]]), ValueError,
         f"masks must be binary (0/1 or bool); found value {np.int64(255)!r} (threshold soft or "
         "0/255 masks before computing metrics)"),
        (np.zeros((2, 3)), np.zeros((3, 2)), ValueError,
         "maps and masks must have the same shape, got (2, 3) and (3, 2)"),
        (np.zeros((2, 2, 2, 2)), np.zeros((2, 2, 2, 2)), ValueError,
         "maps and masks must have shape (H, W), (N, H, W) or (N, 1, H, W), got (2, 2, 2, 2)"),
        (np.zeros(4), np.zeros(4), ValueError,
         "maps and masks must have shape (H, W), (N, H, W) or (N, 1, H, W), got (4,)"),
        (np.zeros((0, 3, 3)), np.zeros((0, 3, 3)), ValueError,
         "maps and masks are empty (shape (0, 3, 3))"),
    ]  # fmt: skip
    for maps, masks, error, message in cases:
        with pytest.raises(error) as info:
            metric(maps, masks)
        assert str(info.value) == message


@pytest.mark.parametrize("metric", [aupro_mvtec, aupro_zsad])
def test_a_one_pixel_map_is_not_empty(metric, caplog):
    """A (1, 1, 1) map is valid input (undefined AUPRO, not an error). Kills ``size == 1``."""
    with caplog.at_level(logging.WARNING, logger="tipsomaly.metrics"):
        assert np.isnan(metric(np.ones((1, 1, 1)), np.ones((1, 1, 1))))
    assert "AUPRO is undefined" in caplog.text


@pytest.mark.parametrize(
    "mask", [np.zeros((1, 2, 2), np.int64), np.zeros((2, 2), bool), np.zeros((1, 1, 2, 2), bool)]
)
def test_foreground_components_takes_only_boolean_stacks(mask):
    """Kills ``ndim != 3 and dtype != bool`` (the guard must refuse either fault alone)."""
    with pytest.raises(ValueError, match=r"^expected an \(N, H, W\) bool array"):
        foreground_components(mask)


@pytest.mark.parametrize("masks", [np.array([[[0, 2], [0, 1]]]), np.zeros((1, 2, 2), complex)])
def test_aupro_mvtec_names_bad_masks_masks(masks):
    with pytest.raises((ValueError, TypeError), match=r"^masks must be"):
        aupro_mvtec(np.arange(4.0).reshape(1, 2, 2), masks)
