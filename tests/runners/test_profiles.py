"""runners/profiles.py: feedback into a profile, measured on generated textures.

Acceptance of issue 20's feedback loop at library level: for each of the four texture kinds of
benchmarks/fewshot.py, a profile is fitted (``run_fit``) on 19 images of one variant of the
class; normal images of a second legitimate variant (other tint and period) are mostly flagged.
Five of them are added with :func:`run_profile_update`; then, on held-out normal images mixed
as the references now are (19 : 5), the false-alarm rate must stay within the recalibrated
threshold's conformal bound. The bound is a mean over reference sets: one profile's rate given
its references is Beta(n+1-k, k)-distributed, so the mean over the four classes is compared
with the bound plus three standard deviations of that mean (Beta spread and the binomial
spread of the held-out count), computed below.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic import tiny_model_dir
from tipsomaly.data.inputs import NoInputsError
from tipsomaly.method.detector import Detector
from tipsomaly.method.profile import Profile
from tipsomaly.runners.fit import CALIBRATION_CSV, run_fit
from tipsomaly.runners.profiles import profile_history, run_profile_rollback, run_profile_update

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from fewshot import KINDS, TextureClass, to_uint8  # noqa: E402

SIZE, RATE = 112, 0.1


def save(folder: Path, images: list[np.ndarray]) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        paths.append(str(folder / f"{i:02d}.png"))
        Image.fromarray(image).save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> Detector:
    model = tiny_model_dir(tmp_path_factory.mktemp("model"))
    return Detector(model, image_size=SIZE, text_cache=False, dtype="fp32", batch_size=32)


def draw(rng: np.random.Generator, cls: TextureClass, n: int) -> list[np.ndarray]:
    return [to_uint8(cls.normal(rng, SIZE)) for _ in range(n)]


def flag_rate(detector: Detector, profile: Profile, images: list[np.ndarray]) -> float:
    detector.set_profiles(profile)
    try:
        return float(
            np.mean([p.is_anomalous for p in detector.predict(images, profile.class_name)])
        )
    finally:
        detector.set_profiles(None)


def test_feedback_keeps_the_false_alarm_rate_within_the_conformal_bound(detector, tmp_path):
    rates, variant_before, variant_after, bounds = [], [], [], []
    for kind in KINDS:
        usual, other = TextureClass(kind, 0), TextureClass(kind, 1)
        rng = np.random.default_rng(11)
        refs, added = draw(rng, usual, 19), draw(rng, other, 5)
        held_usual, held_other = draw(rng, usual, 57), draw(rng, other, 15)
        folder = tmp_path / kind
        fitted = run_fit(
            detector, save(tmp_path / f"{kind}-refs", refs), class_name=kind, out_dir=folder,
            false_alarm_rate=RATE,
        ).profile  # fmt: skip
        variant_before.append(flag_rate(detector, fitted, held_other))
        change = run_profile_update(
            folder, save(tmp_path / f"{kind}-add", added), detector=detector
        )
        profile = change.profile
        assert profile.version == 2 and change.previous_version == 1
        variant_after.append(flag_rate(detector, profile, held_other))
        rates.append(flag_rate(detector, profile, held_usual + held_other))
        bounds.append(profile.thresholds.get(profile.mode, "image").guaranteed_rate)
    # the problem was there: the other variant was mostly flagged, and feedback fixed it
    assert np.mean(variant_before) > 0.5, variant_before
    assert np.mean(variant_after) < 0.5 * np.mean(variant_before), variant_after
    n, m = 24, 72
    k = math.ceil((n + 1) * (1 - RATE) - 1e-9)
    a, b = n + 1 - k, k
    beta_var = a * b / ((a + b) ** 2 * (a + b + 1))
    mean_bound = float(np.mean(bounds))
    assert mean_bound == pytest.approx(1 - k / (n + 1))
    sd = math.sqrt((beta_var + mean_bound * (1 - mean_bound) / m) / len(KINDS))
    print(  # the figures, with -s
        f"variant flagged before {np.mean(variant_before):.3f}, after {np.mean(variant_after):.3f}"
        f"; held-out false-alarm rate {np.mean(rates):.3f} {rates}; bound {mean_bound:.3f}"
        f" + 3 sd {3 * sd:.3f}"
    )
    assert np.mean(rates) <= mean_bound + 3 * sd, (rates, mean_bound, sd)


@pytest.fixture
def small_profile(detector, tmp_path) -> tuple[Path, list[str]]:
    rng = np.random.default_rng(3)
    cls = TextureClass("grain", 0)
    refs, new = (
        save(tmp_path / "refs", draw(rng, cls, 5)),
        save(tmp_path / "new", draw(rng, cls, 2)),
    )
    run_fit(detector, refs, class_name="grain", out_dir=tmp_path / "p", false_alarm_rate=RATE)
    return tmp_path / "p", new


def test_update_and_rollback_rewrite_calibration_csv_and_take_the_lock(detector, small_profile):
    folder, new = small_profile
    table = (folder / CALIBRATION_CSV).read_text()
    assert len(table.splitlines()) == 6 and len(list((folder / "references").iterdir())) == 5
    run_profile_update(folder, new, detector=detector)
    assert len((folder / CALIBRATION_CSV).read_text().splitlines()) == 8
    change = run_profile_rollback(folder)
    assert change.profile.version == 3 and change.previous_version == 2
    assert (folder / CALIBRATION_CSV).read_text() == table  # version 1's table again
    assert [e.version for e in profile_history(folder)] == [1, 2, 3]
    assert not list(folder.glob("*.lock")) and not list(folder.glob(".*lock*"))


def test_no_image_to_add_is_no_inputs(detector, small_profile, tmp_path):
    folder, _ = small_profile
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoInputsError):
        run_profile_update(folder, [tmp_path / "empty"], detector=detector)
    assert Profile.load(folder).version == 1
