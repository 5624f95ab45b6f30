"""The drift check (metrics/drift.py) on detector scores: detection delay and false alarms.

    python benchmarks/drift.py            # 4 texture classes at 112 px, 2000 null runs (~1 min)
    python benchmarks/drift.py --quick    # 2 classes, 400 null runs (~30 s)

Runs from a plain clone on CPU: the tiny golden model (random weights) scores generated
textures (benchmarks/fewshot.py's classes); nothing is downloaded. Per class a profile is
fitted on ``--refs`` normal images (fused mode, promised false-alarm rate ``--rate``), and
``--normal`` further normal images are scored as they are and with the lighting dimmed to
``--brightness`` of its level (every pixel times the factor: a lamp ageing, a shutter or an
aperture set differently).

Detection delay: a line sees the unshifted images, then the dimmed ones (the lighting changes
halfway). After each image the monitor checks the last ``--window`` images (from the 10th
image on): their scores against the profile's calibration scores, and their flags, every
image reviewed as normal (all are). The delay is the number of dimmed images seen when the
first alarm comes; alarms before the change are counted as false alarms of the stream. A line
without the change (the unshifted images only) is checked the same way.

The monitor's own false-alarm rate: ``--runs`` checks where nothing changed, on resampled
scores of the class's unshifted normal images: each run draws ``--refs`` of them as the
calibration scores, makes the threshold from those by the conformal rule
(method/calibration.py), and draws ``--window`` others as the recent images, flagged by that
threshold (a new reference set and new images each run, as the conformal promise and the
tests' levels assume: the profile's own leave-one-out scores are one draw only, and a check
conditioned on one reference set is not at level alpha). That the leave-one-out scores are
exchangeable with new normal images' scores is checked as well: the one-sided Mann-Whitney
p-value of the profile's leave-one-out scores against its unshifted images' scores is printed
per class (uniform over classes when they are). Printed: the rate of runs that raise an
alarm, for the whole check and for each test alone, and for the flag test also as a plain
binomial test (what the beta-binomial replaces: see metrics/drift.py), with the binomial
standard error.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT.parent / "src"))
sys.path.insert(0, str(ROOT))

from fewshot import GOLDEN, KINDS, TextureClass, to_uint8  # noqa: E402

from tipsomaly.method.calibration import conformal_threshold  # noqa: E402
from tipsomaly.method.detector import Detector  # noqa: E402
from tipsomaly.method.fitting import fit_profile  # noqa: E402
from tipsomaly.metrics.drift import check_drift  # noqa: E402
from tipsomaly.tips.model import load_model_dir  # noqa: E402

MODE = "fused"
MIN_WINDOW = 10


@dataclass
class ClassScores:
    """One class: calibration (leave-one-out) scores, the threshold, and image scores of
    normal images as they are and under dimmed lighting (the same images)."""

    name: str
    calibration: np.ndarray  # (n,)
    threshold: float
    rate: float
    normal: np.ndarray  # (m,)
    shifted: np.ndarray  # (m,)


def tiny_detector(size: int) -> Detector:
    model = load_model_dir(GOLDEN, description="golden.json")
    return Detector(model, image_size=size, text_cache=False, batch_size=64, dtype="fp32")


def score_class(
    detector: Detector,
    cls: TextureClass,
    *,
    size: int,
    refs: int,
    normal: int,
    brightness: float,
    rate: float,
    seed: int = 0,
) -> ClassScores:
    """Fit ``cls`` on ``refs`` generated images, score ``normal`` more as they are and dimmed."""
    rng = np.random.default_rng(seed)
    references = [to_uint8(cls.normal(rng, size)) for _ in range(refs)]
    images = [cls.normal(rng, size) for _ in range(normal)]
    profile = fit_profile(detector, references, cls.name, false_alarm_rate=rate)
    detector.set_profiles(profile, MODE)
    try:

        def scores(factor: float) -> np.ndarray:
            batch = [to_uint8(np.clip(x * factor, 0, 1)) for x in images]
            return np.array([p.image_score for p in detector.predict(batch, cls.name)])

        normal_scores, shifted_scores = scores(1.0), scores(brightness)
    finally:
        detector.set_profiles(None)
    return ClassScores(
        cls.name,
        np.asarray(profile.calibration_scores[MODE]),
        profile.image_threshold(MODE),
        rate,
        normal_scores,
        shifted_scores,
    )


def alarms(c: ClassScores, stream: np.ndarray, window: int, alpha: float) -> list[int]:
    """Indices of ``stream`` (image scores in order) after which the monitor alarms, checking
    the last ``window`` images after each one (from the 10th on), all reviewed as normal."""
    out = []
    for t in range(MIN_WINDOW, stream.size + 1):
        recent = stream[max(0, t - window) : t]
        flagged = int((recent >= c.threshold).sum())
        if check_drift(c.calibration, recent, recent.size, flagged, c.rate, alpha).drifted:
            out.append(t - 1)
    return out


def detection(c: ClassScores, window: int, alpha: float) -> tuple[int | None, int, int]:
    """(dimmed images seen at the first alarm after the change or None, alarms before it,
    alarms on a line that never changes)."""
    half = c.normal.size // 2
    stream = np.concatenate([c.normal[:half], c.shifted[half:]])
    found = alarms(c, stream, window, alpha)
    after = [i for i in found if i >= half]
    delay = None if not after else after[0] - half + 1
    return delay, sum(i < half for i in found), len(alarms(c, c.normal, window, alpha))


def null_runs(
    c: ClassScores, n_calibration: int, window: int, alpha: float, runs: int, seed: int
) -> dict[str, int]:
    """Alarms over ``runs`` checks of an unchanged line on ``c.normal`` resampled (see the
    module doc): calibration and recent scores disjoint draws of the same images."""
    rng = np.random.default_rng(seed)
    count = {"check": 0, "flag test": 0, "shift test": 0, "binomial flag test": 0}
    for _ in range(runs):
        drawn = rng.permutation(c.normal)
        calib, recent = drawn[:n_calibration], drawn[n_calibration : n_calibration + window]
        threshold = conformal_threshold(calib, c.rate).threshold
        flagged = int((recent >= threshold).sum())
        count["check"] += check_drift(calib, recent, window, flagged, c.rate, alpha).drifted
        count["flag test"] += check_drift(calib, [], window, flagged, c.rate, alpha).drifted
        count["shift test"] += check_drift(calib, recent, 0, 0, c.rate, alpha).drifted
        count["binomial flag test"] += check_drift([], [], window, flagged, c.rate, alpha).drifted
    return count


def exchangeable_p(c: ClassScores) -> float:
    """One-sided Mann-Whitney p-value of the unshifted images' scores above the profile's
    leave-one-out scores (no drift: uniform over classes)."""
    report = check_drift(c.calibration, c.normal, 0, 0, c.rate)
    assert report.shift_p is not None
    return report.shift_p


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="2 classes, 400 null runs")
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--refs", type=int, default=20, help="references of a profile")
    parser.add_argument("--normal", type=int, default=120, help="scored images per class")
    parser.add_argument("--brightness", type=float, default=0.8, help="dimmed lighting level")
    parser.add_argument("--rate", type=float, default=0.05, help="the profile's promised rate")
    parser.add_argument("--alpha", type=float, default=0.01, help="the check's level")
    parser.add_argument("--window", type=int, default=30, help="recent images checked")
    parser.add_argument("--runs", type=int, default=2000, help="null runs in all")
    args = parser.parse_args()
    kinds = KINDS[:2] if args.quick else KINDS
    runs = 400 if args.quick else args.runs
    start = time.perf_counter()
    detector = tiny_detector(args.size)
    print(
        f"drift check on the tiny golden model, {args.size} px, fused mode; profiles of "
        f"{args.refs} references promising {args.rate:g}; window {args.window}, "
        f"alpha {args.alpha:g}; lighting dimmed to {args.brightness:g} halfway through "
        f"{args.normal} images"
    )
    print(f"{'class':<12}{'delay':>7}{'FA before':>11}{'FA no change':>14}{'LOO vs new p':>14}")
    delays = []
    per_run: dict[str, int] = {}
    for i, kind in enumerate(kinds):
        cls = TextureClass(kind, 0)
        # the detection stream: the profile as fitted on --refs references
        c = score_class(
            detector, cls, size=args.size, refs=args.refs, normal=args.normal,
            brightness=args.brightness, rate=args.rate, seed=i,
        )  # fmt: skip
        delay, before, unchanged = detection(c, args.window, args.alpha)
        delays.append(delay)
        checks = args.normal - MIN_WINDOW + 1
        print(
            f"{c.name:<12}{delay if delay else 'never':>7}{before:>11}{unchanged:>10}/{checks}"
            f"{exchangeable_p(c):>14.3f}"
        )
        share = runs // len(kinds)
        for key, n in null_runs(c, args.refs, args.window, args.alpha, share, i).items():
            per_run[key] = per_run.get(key, 0) + n
    total = (runs // len(kinds)) * len(kinds)
    found = [d for d in delays if d is not None]
    print(
        f"detection delay (dimmed images seen at the first alarm): "
        f"max {max(found) if found else '-'}, mean {np.mean(found) if found else float('nan'):.1f}"
        f", missed in {len(delays) - len(found)} of {len(delays)} classes"
    )
    se = math.sqrt(args.alpha * (1 - args.alpha) / total)
    print(f"false-alarm rate of one check on an unchanged line ({total} runs, alpha {args.alpha:g}"
          f", binomial s.e. {se:.4f}):")  # fmt: skip
    for key, n in per_run.items():
        print(f"  {key:<20}{n / total:.4f}  ({n} of {total})")
    print(f"took {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
