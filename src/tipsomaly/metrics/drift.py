"""Drift: is a profile's false-alarm promise still kept? Two tests on numbers a line collects.

A profile's threshold promises that at most a fraction ``promised_rate`` of new normal images is
flagged, for images exchangeable with its references (same product, camera, lighting).
:func:`check_drift` asks two questions of what a running line has seen since:

1. **Flag rate among images reviewed as normal** — of ``normal_reviewed`` images a person
   confirmed normal, ``normal_flagged`` were flagged; the p-value is that of seeing that many
   or more (one-sided). Without calibration scores it is the exact binomial test against
   ``promised_rate`` (``scipy.stats.binomtest``, ``alternative="greater"``). With the
   profile's n calibration scores it accounts for the threshold being their k-th smallest
   (``k = ⌈(n+1)(1−rate)⌉``, the conformal rule): the rate a given threshold really flags is
   then Beta(n+1−k, k)-distributed around the promise (the promise holds on average over
   reference sets; with 20 references one profile's true rate is often twice another's), so
   the count is beta-binomial (``scipy.stats.betabinom``), exactly, for exchangeable normal
   images. The plain binomial test would call an unchanged line drifted whenever its
   profile's realised rate happens to sit above the average: with a few hundred reviews,
   far more often than ``alpha`` (``benchmarks/drift.py`` measures both). The reviewed images
   must be reviewed whatever their decision (a random sample): counting only flagged images
   that people looked at measures nothing.
2. **Recent scores against the calibration scores** — the profile keeps each reference's
   leave-one-out image score. A one-sided Mann–Whitney U test
   (``scipy.stats.mannwhitneyu``, ``alternative="greater"``) asks whether recent scores run
   higher. Why this test: it is rank-based (no assumption on the score's distribution, which
   is bounded and skewed), the most powerful of the usual two-sample tests against a shift of
   the whole distribution (what lighting, a new supplier or a worn lens does to scores), and it
   can be one-sided. One-sided matters: leave-one-out scores run a little *higher* than a new
   normal image's score against the whole bank, so an unchanged line sits slightly below the
   calibration scores; a two-sided test (Kolmogorov–Smirnov, or a two-sided U) would call that
   drift. A drop of scores does not break the false-alarm promise. Recent scores are meant to
   be of images that are mostly normal: a line whose defect rate is high raises them too.

Each test is run at ``alpha / 2`` when both can be run (Bonferroni), so one check raises a
false alarm with probability at most ``alpha`` when nothing changed. A monitor that checks
again and again still accumulates false alarms over many checks (each check is a test).

Arrays in, numbers out: no files, no models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from ..errors import require

__all__ = ["DriftReport", "check_drift"]


@dataclass(frozen=True)
class DriftReport:
    """The outcome of :func:`check_drift`.

    Attributes:
        drifted: a test rejected at its level (``alpha`` split between the tests run).
        flag_rate_p: the binomial test's one-sided p-value; None without reviewed images.
        shift_p: the Mann–Whitney U test's one-sided p-value; None without scores.
        reasons: one sentence per test that rejected, saying what to do.
        alpha: the check's false-alarm level.
        level: the level each test was run at (``alpha`` / number of tests run).
        normal_reviewed, normal_flagged, promised_rate: the flag-rate test's inputs.
        flag_test: ``"beta-binomial"`` (with calibration scores), ``"binomial"`` or None.
        flag_rate: ``normal_flagged / normal_reviewed`` (None without reviewed images).
        n_calibration, n_recent: how many scores the shift test compared.
        shift_effect: ``P(recent > calibration) + P(tie) / 2`` (U / (n·m), the common-language
            effect size: 0.5 = no shift); None without scores.
        calibration_median, recent_median: the two medians (None without scores).
    """

    drifted: bool
    flag_rate_p: float | None
    shift_p: float | None
    reasons: list[str] = field(default_factory=list)
    alpha: float = 0.01
    level: float = 0.01
    normal_reviewed: int = 0
    normal_flagged: int = 0
    promised_rate: float = 0.0
    flag_test: str | None = None
    flag_rate: float | None = None
    n_calibration: int = 0
    n_recent: int = 0
    shift_effect: float | None = None
    calibration_median: float | None = None
    recent_median: float | None = None

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-able values (``GET /v1/monitor``)."""
        return asdict(self)


def _scores(values: object, name: str) -> np.ndarray:
    a = np.asarray(values, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D (N,), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} must be finite")
    return a


def _percent(rate: float) -> str:
    return f"{100 * rate:.3g} %"


def check_drift(
    calibration_scores: object,
    recent_scores: object,
    normal_reviewed: int,
    normal_flagged: int,
    promised_rate: float,
    alpha: float = 0.01,
) -> DriftReport:
    """Test a profile's promise against what a line saw since (see the module doc).

    Args:
        calibration_scores: (n,) the profile's leave-one-out image scores of one mode
            (``profile.calibration_scores[mode]``): the shift test's baseline, and the n of
            the flag-rate test's beta-binomial (empty: binomial).
        recent_scores: (m,) image scores of recent images of that class, in the same mode.
        normal_reviewed: images reviewed as normal (confirmed normal or false alarm).
        normal_flagged: how many of them the profile had flagged.
        promised_rate: the profile's false-alarm rate (its calibration's ``false_alarm_rate``).
        alpha: the check's own false-alarm level, in (0, 1).

    Returns:
        A :class:`DriftReport`; a test without data (no reviews, or no scores) is not run
        and its p-value is None.

    Raises:
        ValueError: counts out of range, rates outside (0, 1), scores not 1-D or not finite.
    """
    if not 0.0 < alpha < 1.0 or not 0.0 < promised_rate < 1.0:
        raise ValueError(f"alpha and promised_rate must be in (0, 1), got {alpha}, {promised_rate}")
    reviewed, flagged = int(normal_reviewed), int(normal_flagged)
    if reviewed < 0 or not 0 <= flagged <= reviewed:
        raise ValueError(f"need 0 <= normal_flagged <= normal_reviewed, got {flagged}, {reviewed}")
    calib = _scores(calibration_scores, "calibration_scores")
    recent = _scores(recent_scores, "recent_scores")
    stats = require("scipy.stats", "serve", "the drift check")
    run_rate, run_shift = reviewed > 0, calib.size > 0 and recent.size > 0
    level = alpha / max(1, int(run_rate) + int(run_shift))
    reasons: list[str] = []

    rate_p = None
    if run_rate:
        if calib.size:
            n = int(calib.size)  # the conformal rank the profile's threshold used
            k = min(n, max(1, math.ceil((n + 1) * (1.0 - promised_rate) - 1e-9)))
            rate_p = float(stats.betabinom.sf(flagged - 1, reviewed, n + 1 - k, k))
        else:
            rate_p = float(stats.binomtest(flagged, reviewed, promised_rate, "greater").pvalue)
        if rate_p < level:
            reasons.append(
                f"{flagged} of {reviewed} images reviewed as normal were flagged; the profile "
                f"promises {_percent(promised_rate)}: re-fit (or add the false alarms with "
                f"`tipsomaly profile update`)"
            )

    shift_p = effect = calib_median = recent_median = None
    if run_shift:
        test = stats.mannwhitneyu(recent, calib, alternative="greater")
        shift_p = float(test.pvalue)
        effect = float(test.statistic) / (recent.size * calib.size)
        calib_median, recent_median = float(np.median(calib)), float(np.median(recent))
        if shift_p < level:
            reasons.append(
                f"recent scores run above the calibration scores (median {recent_median:.4g} "
                f"of {recent.size} recent images against {calib_median:.4g} of {calib.size} "
                f"references, p = {shift_p:.2g}): the images changed (lighting, supplier, "
                f"camera?); re-fit the profile on images of today's line"
            )
    return DriftReport(
        drifted=bool(reasons),
        flag_rate_p=rate_p,
        shift_p=shift_p,
        reasons=reasons,
        alpha=float(alpha),
        level=float(level),
        normal_reviewed=reviewed,
        normal_flagged=flagged,
        promised_rate=float(promised_rate),
        flag_test=None if rate_p is None else "beta-binomial" if calib.size else "binomial",
        flag_rate=flagged / reviewed if reviewed else None,
        n_calibration=int(calib.size),
        n_recent=int(recent.size),
        shift_effect=effect,
        calibration_median=calib_median,
        recent_median=recent_median,
    )
