"""The drift check on real detector scores: generated textures whose lighting dims halfway.

The tiny golden model scores generated textures (benchmarks/fewshot.py's classes) against a
profile fitted on 20 of them; benchmarks/drift.py holds the stream and the resampling (the
same functions are measured there, on more classes). Stated bound: the monitor (window of 30
images, alpha 0.01) alarms within 30 dimmed images, never before the change nor on a line
that does not change; over 200 resampled checks of an unchanged line its own false-alarm rate
is at most alpha plus 3 binomial standard errors.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from drift import TextureClass, detection, null_runs, score_class, tiny_detector  # noqa: E402

SIZE, WINDOW = 112, 30


@pytest.fixture(scope="module")
def scores():
    return score_class(
        tiny_detector(SIZE), TextureClass("stripes", 0), size=SIZE, refs=20, normal=80,
        brightness=0.8, rate=0.05,
    )  # fmt: skip


def test_a_lighting_change_is_flagged_within_30_images_and_nothing_before(scores):
    delay, before, unchanged = detection(scores, WINDOW, alpha=0.01)
    assert delay is not None and delay <= 30, delay
    assert before == 0 and unchanged == 0


def test_the_monitors_own_false_alarm_rate_over_200_checks(scores):
    """Calibration and recent scores drawn apart from the class's normal image scores, each
    run a new draw (benchmarks/drift.py says why); alpha 0.05 for resolution."""
    alpha, runs = 0.05, 200
    count = null_runs(scores, n_calibration=20, window=WINDOW, alpha=alpha, runs=runs, seed=0)
    margin = 3 * math.sqrt(alpha * (1 - alpha) / runs)
    assert count["check"] / runs <= alpha + margin, count
