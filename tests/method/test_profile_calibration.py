"""End to end: a profile's thresholds give new normal images the false-alarm rate they promise.

A profile is fitted on n generated normal textures at rate α, then many fresh textures of the
same generator (exchangeable with the references) are predicted. For one fit, the rate of the
k-th smallest of n calibration scores (``k = ⌈(n+1)(1−α)⌉``) on new images is
Beta(n+1−k, k)-distributed under exchangeability (exactly so in zero-shot mode; leave-one-out
scores of the few-shot modes run a little high, so their rate is at most that), so the observed
rate must lie below that Beta law's 99.9 % quantile plus the binomial noise of the fresh sample.
Averaged over many fits, the rate must be at most α within noise (zero-shot: equal to it).
A threshold calibrated on the references scored against a bank holding them would flag almost
every new image: checked too, so the test can tell.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import beta

from goldens import golden_dirs
from tipsomaly.data.images import preprocess
from tipsomaly.method.calibration import conformal_rank, conformal_threshold
from tipsomaly.method.config import MODES
from tipsomaly.method.detector import Detector
from tipsomaly.method.fitting import fit_profile
from tipsomaly.tips.model import load_model_dir

SIZE = 42  # 3 × 3 patches of 14: the pipeline at its cheapest
N_REFS, ALPHA = 39, 0.1  # k = 36: Beta(4, 36), mean 0.1
N_FRESH = 2000
CLASS = "tile"


def texture(rng: np.random.Generator, size: int = SIZE) -> np.ndarray:
    """A normal texture: 6-px blocks of random grey plus pixel noise, tinted (uint8 RGB)."""
    blocks = rng.random((size // 6 + 1, size // 6 + 1))
    grey = np.kron(blocks, np.ones((6, 6)))[:size, :size] * 0.6 + 0.4 * rng.random((size, size))
    return (np.stack([grey, grey * 0.95, grey * 0.85], -1) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def model():
    return load_model_dir(golden_dirs()[0], description="golden.json")


@pytest.fixture(scope="module")
def detector(model) -> Detector:
    return Detector(model, image_size=SIZE, text_cache=False, batch_size=500)


@pytest.fixture(scope="module")
def fresh() -> list[np.ndarray]:
    rng = np.random.default_rng(2024)
    return [texture(rng) for _ in range(N_FRESH)]


def single_fit_bound(n: int, alpha: float, m: int, q: float = 0.999) -> float:
    """Upper bound on the observed rate of one fit: the q-quantile of Beta(n+1−k, k), plus
    3.3 binomial standard deviations of a rate measured on m images."""
    k = conformal_rank(n, alpha)
    upper = float(beta.ppf(q, n + 1 - k, k))
    return upper + 3.3 * math.sqrt(upper * (1 - upper) / m)


def test_one_fit_keeps_its_false_alarm_rate(detector, fresh):
    rng = np.random.default_rng(7)
    references = [texture(rng) for _ in range(N_REFS)]
    profile = fit_profile(detector, references, CLASS, false_alarm_rate=ALPHA)
    bound = single_fit_bound(N_REFS, ALPHA, N_FRESH)
    assert 0.25 < bound < 0.35  # Beta(4, 36): 99.9 % quantile ≈ 0.29
    rates = {}
    for mode in MODES:
        calib = profile.thresholds.get(mode, "image")
        assert calib is not None and calib.attainable
        assert (calib.n, calib.k) == (N_REFS, conformal_rank(N_REFS, ALPHA))
        assert calib.guaranteed_rate <= ALPHA + 1e-12
        detector.set_profiles(profile, mode)
        preds = detector.predict(fresh, CLASS)
        scores = np.array([p.image_score for p in preds])
        flagged = np.array([p.is_anomalous for p in preds])
        assert all(p.mode == mode and p.threshold == calib.threshold for p in preds)
        assert np.array_equal(flagged, scores >= calib.threshold)
        rates[mode] = float(flagged.mean())
        assert rates[mode] <= bound, f"{mode}: {rates[mode]:.3f} of new normal images flagged"

        # control: a threshold from the references scored against a bank that holds them
        if mode != "zero-shot":
            own = [p.image_score for p in detector.predict(references, CLASS)]
            wrong = conformal_threshold(own, ALPHA).threshold
            assert float((scores >= wrong).mean()) > 0.9, mode  # what the test guards against
    detector.set_profiles(None)
    print("false-alarm rates of one fit:", rates)


def test_many_fits_average_to_at_most_alpha(model, fresh):
    """Over 16 independent fits (new references each), the mean rate is ≤ α within noise, and
    zero-shot's (plain split conformal) is α itself: 1 − k/(n+1) = 0.1 for n=39.

    The fresh images are encoded once and scored per fit through ``score_features``; the maps
    are not smoothed (sigma 0: image scores do not depend on it), which keeps this fast.
    """
    detector = Detector(model, image_size=SIZE, sigma=0, text_cache=False, batch_size=500)
    with torch.no_grad():
        images = torch.stack([preprocess(x, SIZE) for x in fresh])
        features = detector.model.encode_image(images)
    names = [CLASS] * N_FRESH
    rng = np.random.default_rng(11)
    fits = 16
    rates: dict[str, list[float]] = {mode: [] for mode in MODES}
    for _ in range(fits):
        references = [texture(rng) for _ in range(N_REFS)]
        profile = fit_profile(detector, references, CLASS, false_alarm_rate=ALPHA)
        for mode in MODES:
            detector.set_profiles(profile, mode)
            with torch.no_grad():
                scores = detector.head.output(detector.score_features(features, names))
            flagged = scores.image_score.cpu().numpy() >= profile.image_threshold(mode)
            rates[mode].append(float(flagged.mean()))
    detector.set_profiles(None)
    k = conformal_rank(N_REFS, ALPHA)
    # sd of the mean: Beta(n+1−k, k) per fit, averaged over the fits, plus the binomial noise
    # of the N_FRESH images (shared by all fits: it does not average out)
    a, b = N_REFS + 1 - k, k
    beta_var = a * b / ((a + b) ** 2 * (a + b + 1))
    tolerance = 4 * math.sqrt(beta_var / fits + ALPHA * (1 - ALPHA) / N_FRESH)
    means = {mode: float(np.mean(r)) for mode, r in rates.items()}
    for mode in MODES:
        assert means[mode] <= ALPHA + tolerance, (mode, means)
        assert means[mode] > 0.02, (mode, means)  # not vacuous either: the bound is used
    expected = 1 - k / (N_REFS + 1)
    assert abs(means["zero-shot"] - expected) <= tolerance, means
    print("mean false-alarm rates over", fits, "fits:", means)
