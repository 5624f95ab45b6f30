"""metrics/drift.check_drift: the two tests, their split level, and the check's own false alarms.

The p-values are checked against sums written out here (binomial tail; Mann–Whitney U counted
pair by pair), the false-alarm rate of the check over many repeated runs on data where nothing
changed, and its power on shifted data.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tipsomaly.metrics.drift import DriftReport, check_drift


def binomial_tail(k: int, n: int, p: float) -> float:
    return sum(math.comb(n, i) * p**i * (1 - p) ** (n - i) for i in range(k, n + 1))


def test_flag_rate_p_is_the_binomial_upper_tail_and_the_reason_says_what_to_do():
    report = check_drift([], [], normal_reviewed=40, normal_flagged=12, promised_rate=0.05)
    assert report.flag_rate_p == pytest.approx(binomial_tail(12, 40, 0.05), rel=1e-9)
    assert report.shift_p is None  # no scores: that test is not run, the level is not split
    assert report.level == report.alpha == 0.01
    assert report.drifted and len(report.reasons) == 1
    assert report.reasons[0].startswith("12 of 40 images reviewed as normal were flagged")
    assert "promises 5 %" in report.reasons[0] and "re-fit" in report.reasons[0]
    assert report.flag_rate == pytest.approx(0.3)


def test_a_flag_rate_within_the_promise_is_no_drift():
    report = check_drift([], [], normal_reviewed=40, normal_flagged=3, promised_rate=0.05)
    assert report.flag_rate_p == pytest.approx(binomial_tail(3, 40, 0.05), rel=1e-9)
    assert not report.drifted and report.reasons == []


def test_shift_p_matches_u_counted_by_pairs_and_is_one_sided():
    rng = np.random.default_rng(0)
    calib = rng.normal(0.5, 0.05, 30)
    up = rng.normal(0.6, 0.05, 40)
    report = check_drift(calib, up, 0, 0, 0.05)
    u = sum(float(r > c) + 0.5 * float(r == c) for r in up for c in calib)
    assert report.shift_effect == pytest.approx(u / (30 * 40))
    assert report.shift_p is not None and report.shift_p < 1e-6 and report.drifted
    assert "recent scores run above the calibration scores" in report.reasons[0]
    # scores that drop do not break the false-alarm promise: one-sided, no drift
    down = check_drift(calib, rng.normal(0.4, 0.05, 40), 0, 0, 0.05)
    assert down.shift_p is not None and down.shift_p > 0.99 and not down.drifted


def test_both_tests_share_alpha():
    """With both tests run each gets alpha / 2: a p-value between the two levels is no drift."""
    rng = np.random.default_rng(1)
    calib = rng.normal(0, 1, 200)

    def flags_only(k: int):  # no recent scores: only the flag test runs, at alpha
        return check_drift(calib, [], 200, k, 0.05, alpha=0.01)

    k = next(k for k in range(200) if flags_only(k).flag_rate_p < 0.01)
    alone = flags_only(k)
    assert 0.005 <= alone.flag_rate_p < 0.01, "the case needs a p-value between the levels"
    both = check_drift(calib, rng.normal(0, 1, 50), 200, k, 0.05, alpha=0.01)
    assert alone.drifted and alone.level == 0.01
    assert both.level == 0.005 and both.flag_rate_p == alone.flag_rate_p
    assert not any("reviewed as normal" in r for r in both.reasons)


def conformal(calib: np.ndarray, rate: float) -> float:
    """The profile's threshold rule (method/calibration.py), written out: the k-th smallest."""
    n = calib.size
    k = min(n, math.ceil((n + 1) * (1 - rate) - 1e-9))
    return float(np.sort(calib)[k - 1])


def null_run(rng: np.random.Generator, n: int, m: int, rate: float) -> tuple:
    """One line where nothing changed: n calibration scores, a threshold by the conformal rule,
    m new normal images from the same (skewed) distribution, all reviewed as normal."""
    calib = rng.gamma(2.0, 0.1, n)
    recent = rng.gamma(2.0, 0.1, m)
    return calib, recent, int((recent > conformal(calib, rate)).sum())


def test_false_alarm_rate_of_the_check_itself_over_repeated_runs():
    """Nothing changed: over 2000 runs at alpha = 0.05 the check flags at most alpha plus a
    binomial margin (3 standard errors)."""
    rng = np.random.default_rng(2)
    alpha, runs, alarms = 0.05, 2000, 0
    for _ in range(runs):
        calib, recent, flagged = null_run(rng, 20, 60, 0.05)
        alarms += check_drift(calib, recent, 60, flagged, 0.05, alpha=alpha).drifted
    rate = alarms / runs
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), rate


def test_flag_rate_p_with_calibration_scores_is_beta_binomial():
    """n = 19 scores at rate 0.1: k = 18, the true rate ~ Beta(2, 18); P(X >= 7 of 30) written
    out with the beta function."""
    n, m, j0, rate = 19, 30, 7, 0.1
    k = math.ceil((n + 1) * (1 - rate) - 1e-9)
    a, b = n + 1 - k, k

    def log_beta(x: float, y: float) -> float:
        return math.lgamma(x) + math.lgamma(y) - math.lgamma(x + y)

    tail = sum(
        math.comb(m, j) * math.exp(log_beta(j + a, m - j + b) - log_beta(a, b))
        for j in range(j0, m + 1)
    )
    report = check_drift(np.linspace(0, 1, n), [], m, j0, rate)
    assert report.flag_test == "beta-binomial"
    assert report.flag_rate_p == pytest.approx(tail, rel=1e-9)
    assert report.flag_rate_p > binomial_tail(j0, m, rate)  # wider than the binomial's


def test_the_plain_binomial_test_false_alarms_where_the_beta_binomial_does_not():
    """Why the flag test uses the calibration's n: with 400 reviews of an unchanged line, a
    20-reference profile's realised rate varies so much that the binomial test (no calibration
    scores given) rejects far more often than alpha; the beta-binomial keeps alpha."""
    rng = np.random.default_rng(4)
    alpha, runs = 0.05, 600
    binomial = beta = 0
    for _ in range(runs):
        calib, recent, flagged = null_run(rng, 20, 400, 0.05)
        binomial += check_drift([], [], 400, flagged, 0.05, alpha=alpha).drifted
        beta += check_drift(calib, [], 400, flagged, 0.05, alpha=alpha).drifted
    margin = 3 * math.sqrt(alpha * (1 - alpha) / runs)
    assert beta / runs <= alpha + margin, beta / runs
    assert binomial / runs > 3 * alpha, binomial / runs


def test_power_a_shift_of_half_a_spread_is_found_in_most_runs():
    rng = np.random.default_rng(3)
    hits = sum(
        check_drift(rng.normal(0, 1, 30), rng.normal(1.0, 1, 60), 0, 0, 0.05).drifted
        for _ in range(200)
    )
    assert hits / 200 > 0.9


def test_report_to_dict_is_json():
    report = check_drift([0.1, 0.2, 0.3], [0.2, 0.25], 5, 1, 0.05)
    record = json.loads(json.dumps(report.to_dict()))
    assert record["drifted"] is False and record["n_calibration"] == 3
    assert isinstance(report, DriftReport)
    with pytest.raises(AttributeError):
        report.drifted = True  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"normal_flagged": 5, "normal_reviewed": 3}, "normal_flagged"),
        ({"normal_reviewed": -1}, "normal_flagged"),
        ({"promised_rate": 0.0}, "promised_rate"),
        ({"alpha": 1.0}, "alpha"),
        ({"recent_scores": [[0.1]]}, "1-D"),
        ({"calibration_scores": [0.1, float("nan")]}, "finite"),
    ],
)
def test_bad_arguments_are_refused(kwargs, match):
    args = {
        "calibration_scores": [0.1, 0.2],
        "recent_scores": [0.3],
        "normal_reviewed": 3,
        "normal_flagged": 0,
        "promised_rate": 0.05,
        **kwargs,
    }
    with pytest.raises(ValueError, match=match):
        check_drift(**args)
