"""Conformal thresholds: the false-alarm rate they promise is the rate they give.

The statistical tests draw n calibration scores, threshold them, and measure the fraction of
fresh scores of the same distribution flagged (``score >= threshold``), averaged over many
repetitions. Split conformal prediction makes that mean *exactly* ``1 − k/(n+1)`` for a
continuous distribution (``k = ⌈(n+1)(1−α)⌉``) and a computable smaller value with ties, so the
tests check the mean against that number within a few standard errors, not only against α:
an off-by-one rank, ``n`` in place of ``n+1``, the maximum in place of the order statistic, or
a threshold not nudged above a tied score each move the mean by many standard errors.

The functions are reached through the module (``cal.conformal_threshold``) so that a wrong
variant can be swapped in to check that these tests catch it.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import binom

from tipsomaly.method import calibration as cal

# ------------------------------------------------------------------------------ references


def exact_rank(n: int, alpha: float) -> int:
    """``⌈(n+1)(1−α)⌉`` in exact arithmetic (α as written in decimal)."""
    return max(1, math.ceil((n + 1) * (1 - Fraction(str(alpha)))))


# Discrete scores with ties: values 0..5 with these probabilities.
DISCRETE_P = np.array([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])


def _discrete(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.choice(len(DISCRETE_P), size=shape, p=DISCRETE_P).astype(np.float64) * 0.25


DISTRIBUTIONS = {
    "normal": lambda rng, shape: rng.normal(0.4, 0.1, shape),
    "exponential": lambda rng, shape: rng.exponential(1.0, shape),
    "pareto": lambda rng, shape: rng.pareto(1.5, shape) * 1e3,  # heavy tail, large values
    "uniform": lambda rng, shape: rng.uniform(0.0, 2.0, shape),
    "discrete": _discrete,
}


def expected_rate(dist: str, n: int, k: int) -> float:
    """E[P(fresh score > s_(k))] over the calibration draw: ``1 − k/(n+1)`` when continuous;
    with ties, the sum over values v of P(s_(k) = v) · P(score > v), where
    P(s_(k) <= v) = P(Binomial(n, F(v)) >= k)."""
    if dist != "discrete":
        return 1.0 - k / (n + 1)
    cdf = np.cumsum(DISCRETE_P)
    at_most = binom.sf(k - 1, n, cdf)  # P(s_(k) <= v)
    at = np.diff(np.concatenate(([0.0], at_most)))
    return float(np.sum(at * (1.0 - cdf)))


# (n, α): several where ⌈(n+1)(1−α)⌉ differs from ⌈n(1−α)⌉ (14/0.1, 50/0.05, 30/0.25,
# 39/0.1), ones where (n+1)(1−α) is a whole number (19/0.1, 99/0.01), one too small for α
# (5/0.1: the maximum is used, guaranteeing 1/(n+1)).
CASES = [(14, 0.1), (19, 0.1), (39, 0.1), (50, 0.05), (30, 0.25), (99, 0.01), (5, 0.1)]
REPEATS, FRESH = 1000, 2000
Z = 5.0  # standard errors allowed (the draws are seeded: the outcome is fixed)


def measured_rates(dist: str, n: int, alpha: float, seed: int) -> tuple[np.ndarray, list]:
    """Per repetition: the fraction of FRESH new scores flagged; and the calibrations."""
    rng = np.random.default_rng(seed)
    draw = DISTRIBUTIONS[dist]
    calib = draw(rng, (REPEATS, n))
    calibrations = [cal.conformal_threshold(row, alpha) for row in calib]
    thresholds = np.array([c.threshold for c in calibrations])
    fresh = draw(rng, (REPEATS, FRESH))
    rates = (fresh >= thresholds[:, None]).mean(axis=1)
    return rates, calibrations


# ------------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("n,alpha", CASES, ids=[f"n{n}-a{a}" for n, a in CASES])
@pytest.mark.parametrize("dist", list(DISTRIBUTIONS))
def test_false_alarm_rate_is_the_promised_one(dist, n, alpha):
    seed = list(DISTRIBUTIONS).index(dist) * 1000 + n
    rates, calibrations = measured_rates(dist, n, alpha, seed)
    mean = float(rates.mean())
    se = float(rates.std(ddof=1)) / math.sqrt(REPEATS)
    k = exact_rank(n, alpha)
    attainable = k <= n
    expected = expected_rate(dist, n, min(k, n))
    assert abs(mean - expected) <= Z * se + 1e-12, (
        f"{dist}, n={n}, α={alpha}: mean false-alarm rate {mean:.4f} ± {se:.4f}, "
        f"theory {expected:.4f} (k={min(k, n)})"
    )
    guaranteed = calibrations[0].guaranteed_rate
    assert all(c.guaranteed_rate == guaranteed for c in calibrations)
    assert mean <= guaranteed + Z * se, f"rate {mean:.4f} above the stated bound {guaranteed}"
    if attainable:
        assert mean <= alpha + Z * se, f"rate {mean:.4f} above α={alpha}"
    else:
        assert guaranteed == pytest.approx(1 / (n + 1))


def test_the_statistical_test_can_tell_off_by_one_ranks_apart():
    """The tolerance is tight enough: the rates of rank k ± 1, of ⌈n(1−α)⌉ and of the
    maximum all lie outside it (for n=14, α=0.1: 1/15 versus 2/15 or 0)."""
    n, alpha = 14, 0.1
    rates, _ = measured_rates("uniform", n, alpha, seed=7)
    tolerance = Z * float(rates.std(ddof=1)) / math.sqrt(REPEATS)
    k = exact_rank(n, alpha)
    assert k != math.ceil(n * (1 - Fraction(str(alpha))))
    for wrong in (k - 1, k + 1, math.ceil(n * (1 - Fraction(str(alpha))))):
        if wrong == k or not 1 <= wrong <= n + 1:
            continue
        assert abs((1 - wrong / (n + 1)) - (1 - k / (n + 1))) > 3 * tolerance


# ------------------------------------------------------------------------- exact properties


@pytest.mark.parametrize("alpha", [0.001, 0.01, 0.05, 0.1, 0.2, 0.25, 0.3, 0.5, 0.9])
def test_rank_is_the_exact_ceiling(alpha):
    ns = list(range(1, 1200)) + [9_999, 10_000, 123_456, 1_000_000, 999_999]
    for n in ns:
        assert cal.conformal_rank(n, alpha) == exact_rank(n, alpha), (n, alpha)


@pytest.mark.parametrize("n,alpha", CASES + [(1, 0.5), (2, 0.3), (200, 0.01)])
def test_threshold_is_just_above_the_kth_smallest_score(n, alpha):
    rng = np.random.default_rng(n)
    scores = rng.normal(size=n)
    c = cal.conformal_threshold(scores, alpha)
    k = exact_rank(n, alpha)
    used = min(k, n)
    kth = np.sort(scores)[used - 1]
    assert (c.n, c.k, c.attainable) == (n, used, k <= n)
    assert c.threshold == np.nextafter(kth, np.inf)
    assert c.false_alarm_rate == alpha
    assert c.guaranteed_rate == pytest.approx(1 - used / (n + 1))
    flagged = scores >= c.threshold
    assert flagged.sum() == n - used  # exactly the scores above s_(k)
    # order and container do not matter
    assert cal.conformal_threshold(list(scores[::-1]), alpha) == c


def test_ties_at_the_kth_score_are_not_flagged():
    scores = np.array([0.0, 1.0, 2.0, 3.0, 3.0, 3.0, 3.0, 3.0, 3.0, 4.0])  # n=10
    c = cal.conformal_threshold(scores, 0.3)  # k = ⌈11·0.7⌉ = 8: s_(8) = 3.0
    assert c.k == 8
    assert c.threshold > 3.0 and c.threshold == np.nextafter(3.0, np.inf)
    assert (scores >= c.threshold).tolist() == [False] * 9 + [True]


@pytest.mark.parametrize("alpha", [0.5, 0.25, 0.1, 0.05, 0.01, 0.001])
def test_too_few_scores_use_the_maximum_and_say_so(alpha):
    smallest = cal.min_scores(alpha)
    # n < 1/α − 1 cannot reach α; n = ⌈1/α − 1⌉ can
    assert smallest == math.ceil(1 / Fraction(str(alpha)) - 1)
    for n in sorted({1, 2, smallest - 1, smallest}):
        if n < 1:
            continue
        scores = np.linspace(0.0, 1.0, n) + 0.5
        c = cal.conformal_threshold(scores, alpha)
        if n < smallest:
            assert not c.attainable, (n, alpha)
            assert c.k == n
            assert c.threshold == np.nextafter(scores.max(), np.inf)
            assert c.guaranteed_rate == pytest.approx(1 / (n + 1))
            assert c.guaranteed_rate > alpha
            assert "cannot guarantee" in c.note and str(smallest) in c.note
        else:
            assert c.attainable, (n, alpha)
            assert c.guaranteed_rate <= alpha + 1e-12
            assert "cannot" not in c.note
    record = cal.conformal_threshold([1.0, 2.0], alpha).to_dict()
    assert set(record) >= {"threshold", "guaranteed_rate", "n", "k", "attainable", "note"}


@pytest.mark.parametrize(
    "scores", [[], np.empty((0,)), [1.0, np.nan], [np.inf, 0.0], [-np.inf], [[np.nan]]]
)
def test_empty_or_non_finite_scores_are_refused(scores):
    with pytest.raises(ValueError, match="at least one|finite"):
        cal.conformal_threshold(scores, 0.1)


@pytest.mark.parametrize("alpha", [0.0, 1.0, -0.1, 1.5, float("nan"), float("inf")])
def test_alpha_outside_the_open_unit_interval_is_refused(alpha):
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        cal.conformal_threshold([0.1, 0.2, 0.3], alpha)
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        cal.pixel_threshold(np.ones(4, np.float32), 4, alpha)
    with pytest.raises(ValueError):
        cal.conformal_rank(10, alpha)


def test_rank_needs_a_score():
    with pytest.raises(ValueError, match="at least one"):
        cal.conformal_rank(0, 0.1)


# ------------------------------------------------------------------------------------ pixels


def _random_maps(seed: int, quantised: bool) -> np.ndarray:
    rng = np.random.default_rng(seed)
    maps = rng.beta(2.0, 5.0, size=(6, 37, 41)).astype(np.float32)
    if quantised:  # many ties, as in maps of saturated probabilities
        maps = np.round(maps * 32) / np.float32(32)
    return maps


@pytest.mark.parametrize("quantised", [False, True], ids=["continuous", "ties"])
@pytest.mark.parametrize("alpha", [0.5, 0.1, 0.01, 0.001, 1e-4, 1e-5])
def test_pixel_threshold_matches_brute_force(alpha, quantised):
    maps = _random_maps(int(alpha * 1e6) + quantised, quantised)
    values = maps.reshape(-1)
    n = values.size
    keep = cal.pixels_to_keep(n, alpha)
    top = np.partition(values, n - keep)[n - keep :]  # the `keep` largest, unordered
    c = cal.pixel_threshold(top, n, alpha)

    k = exact_rank(n, alpha)
    used = min(k, n)
    assert keep == n - used + 1
    assert (c.n, c.k, c.attainable) == (n, used, k <= n)
    kth = np.sort(values)[used - 1]
    # the same order statistic, the np.quantile way (inverted CDF: the ⌈n·q⌉-th smallest)
    assert np.quantile(values, (used - 0.5) / n, method="inverted_cdf") == kth
    assert isinstance(c.threshold, float)
    assert np.float32(c.threshold) == np.nextafter(kth, np.float32(np.inf))
    flagged = values >= np.float32(c.threshold)
    assert flagged.sum() == (values > kth).sum()
    assert flagged.sum() <= n - used
    if not quantised:  # distinct values: exactly n − k pixels above
        assert flagged.sum() == n - used
    # all values instead of the top ones: the same answer
    assert cal.pixel_threshold(values, n, alpha) == c


def test_pixel_threshold_needs_enough_top_values():
    values = np.arange(100, dtype=np.float32)
    need = cal.pixels_to_keep(100, 0.1)
    assert need == 100 - exact_rank(100, 0.1) + 1
    with pytest.raises(ValueError, match="needed"):
        cal.pixel_threshold(values[-(need - 1) :], 100, 0.1)
    with pytest.raises(ValueError, match="at least one pixel"):
        cal.pixel_threshold(values, 0, 0.1)


def test_pixel_threshold_when_alpha_is_out_of_reach():
    values = np.array([0.2, 0.9, 0.5], dtype=np.float32)
    c = cal.pixel_threshold(values, 3, 0.1)
    assert not c.attainable and c.k == 3
    assert np.float32(c.threshold) == np.nextafter(np.float32(0.9), np.float32(np.inf))
    assert c.guaranteed_rate == pytest.approx(0.25)
