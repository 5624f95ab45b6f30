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
    calib = rng.normal(0, 1, 50)
    # a flag count whose p-value lies in [alpha/2, alpha)
    k = next(k for k in range(60) if binomial_tail(k, 60, 0.05) < 0.01)
    p = binomial_tail(k, 60, 0.05)
    assert 0.005 <= p < 0.01, "the case needs a p-value between the two levels"
    alone = check_drift([], [], 60, k, 0.05, alpha=0.01)
    both = check_drift(calib, rng.normal(0, 1, 50), 60, k, 0.05, alpha=0.01)
    assert alone.drifted and alone.level == 0.01
    assert both.level == 0.005 and both.flag_rate_p == pytest.approx(p)
    assert not any("reviewed as normal" in r for r in both.reasons)


def test_false_alarm_rate_of_the_check_itself_over_repeated_runs():
    """Nothing changed (recent scores and flags drawn like the calibration's): over 2000 runs
    at alpha = 0.05 the check flags at most alpha plus a binomial margin (3 standard errors)."""
    rng = np.random.default_rng(2)
    alpha, runs, alarms = 0.05, 2000, 0
    for _ in range(runs):
        calib = rng.gamma(2.0, 0.1, 20)  # skewed, like distances
        recent = rng.gamma(2.0, 0.1, 60)
        flagged = int(rng.binomial(40, 0.05))
        alarms += check_drift(calib, recent, 40, flagged, 0.05, alpha=alpha).drifted
    rate = alarms / runs
    assert rate <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs), rate


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
