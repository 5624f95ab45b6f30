"""Profile versions (method/profile_versions.py) on the tiny golden model.

An update must be exactly a fit on the old and new references (bank, thresholds, every
leave-one-out score), written as a new version whose parent is the old one's digest; a
rollback must bring back the old version's bank and thresholds bit for bit; bad input must
leave the folder as it was, byte for byte.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthetic import tiny_model_dir
from tipsomaly.data.images import ImageLoadError
from tipsomaly.method import profile_versions
from tipsomaly.method.config import DetectorConfig
from tipsomaly.method.detector import Detector
from tipsomaly.method.fitting import fit_profile
from tipsomaly.method.profile import Profile, ProfileError, ProfileMismatchError, profile_digest
from tipsomaly.method.profile_versions import (
    history,
    load_version,
    rollback,
    store_references,
    update_profile,
    version_numbers,
)
from tipsomaly.metrics.drift import check_drift

SIZE = 70


def write_textures(folder: Path, n: int, seed: int, bright: float = 1.0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        base = rng.random((15, 15))
        img = np.kron(base, np.ones((6, 6)))[:84, :84] * 0.6 + 0.4 * rng.random((84, 84))
        rgb = np.stack([img, img * 0.95, img * 0.85], -1) * 255 * bright
        path = folder / f"img_{i:02d}.png"
        Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(path)
        paths.append(str(path))
    return paths


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path → SHA-256): equal means byte-identical."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("versions")
    model = tiny_model_dir(root / "model")
    detector = Detector(model, image_size=SIZE, text_cache=False, dtype="fp32")
    refs = write_textures(root / "refs", 6, seed=1)
    new = write_textures(root / "new", 3, seed=2)
    return {"root": root, "model": model, "detector": detector, "refs": refs, "new": new}


def fitted(setup, name: str, **kw) -> Path:
    """A fitted profile folder as `fit` writes it (references stored by content)."""
    folder = setup["root"] / name
    shutil.rmtree(folder, ignore_errors=True)
    profile = fit_profile(setup["detector"], setup["refs"], "tile", false_alarm_rate=0.2, **kw)
    refs = profile.info["references"]
    store_references(folder, refs["sources"], refs["sha256"])
    profile.save(folder)
    return folder


def test_a_fitted_profile_is_version_1_with_its_calibration_scores(setup):
    folder = fitted(setup, "v1")
    p = Profile.load(folder)
    assert p.version == 1 and p.parent is None and version_numbers(folder) == []
    assert p.reference_names == [f"img_{i:02d}.png" for i in range(6)]
    assert set(p.calibration_scores) == {"zero-shot", "few-shot", "fused"}
    for mode, scores in p.calibration_scores.items():
        assert len(scores) == 6
        assert p.thresholds.get(mode, "image").threshold > max(scores)  # k = n at 0.2 and n = 6
    [entry] = history(folder)
    assert entry.version == 1 and entry.current and entry.digest == profile_digest(p)


def test_update_is_a_fit_on_old_and_new_references_as_a_new_version(setup):
    folder = fitted(setup, "update")
    v1 = Profile.load(folder)
    v2 = update_profile(setup["detector"], folder, setup["new"])
    fresh = fit_profile(
        setup["detector"], setup["refs"] + setup["new"], "tile", false_alarm_rate=0.2
    )
    assert v2.version == 2 and v2.parent == profile_digest(v1)
    assert profile_digest(v2) == profile_digest(fresh) != profile_digest(v1)
    assert v2.thresholds == fresh.thresholds
    # every old reference's leave-one-out score was computed again against the larger bank
    assert v2.calibration_scores == fresh.info["calibration"]["scores"]
    assert v2.calibration_scores["few-shot"][:6] != v1.calibration_scores["few-shot"]
    assert len(v2.reference_names) == 9
    loaded = Profile.load(folder)  # the folder's current version is the new one
    assert loaded.version == 2 and profile_digest(loaded) == profile_digest(v2)
    assert loaded.thresholds == v2.thresholds
    # the top level is version 2's record, text for text; version 1 kept as it was
    top = (folder / "profile.json").read_text()
    assert top == (folder / "versions" / "2" / "profile.json").read_text()
    assert json.loads(top)["format"] == "tipsomaly-profile-2"
    old = load_version(folder, 1)
    assert profile_digest(old) == profile_digest(v1) and old.thresholds == v1.thresholds
    assert [e.version for e in history(folder)] == [1, 2]
    assert [e.current for e in history(folder)] == [False, True]


def test_update_draws_the_coreset_over_all_references(setup):
    limit = 5 * 25  # 5 references' worth of patches (5 x 5 grid at 70 px)
    folder = fitted(setup, "coreset", max_bank=limit)
    v2 = update_profile(setup["detector"], folder, setup["new"])
    fresh = fit_profile(
        setup["detector"], setup["refs"] + setup["new"], "tile", false_alarm_rate=0.2,
        max_bank=limit,
    )  # fmt: skip
    assert len(v2.bank.patches) == limit and v2.info["bank"]["patches_before_coreset"] == 9 * 25
    assert profile_digest(v2) == profile_digest(fresh) and v2.thresholds == fresh.thresholds


def test_rollback_restores_the_old_version_exactly_as_a_new_version(setup):
    folder = fitted(setup, "rollback")
    v1 = Profile.load(folder)
    update_profile(setup["detector"], folder, setup["new"])
    v3 = rollback(folder)
    assert v3.version == 3 and v3.info["restored_from"] == 1
    assert v3.parent == history(folder)[1].digest
    loaded = Profile.load(folder)
    assert profile_digest(loaded) == profile_digest(v1) and loaded.thresholds == v1.thresholds
    for a, b in zip(loaded.bank.state_dict().values(), v1.bank.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    # the old decisions: the same image scores against the same thresholds
    images = setup["new"]
    setup["detector"].set_profiles(v1)
    before = [(p.image_score, p.is_anomalous) for p in setup["detector"].predict(images, "tile")]
    setup["detector"].set_profiles(folder)
    after = [(p.image_score, p.is_anomalous) for p in setup["detector"].predict(images, "tile")]
    setup["detector"].set_profiles(None)
    assert after == before
    with pytest.raises(ProfileError, match="no version 7"):
        rollback(folder, to=7)
    with pytest.raises(ProfileError, match="already the current one"):
        rollback(folder, to=3)


def test_an_old_profile_folder_without_versions_or_copies_still_loads_and_updates(setup):
    """A profile written before versions: no sha256 list, no references/ copies; it loads as
    version 1 and updates from its references' recorded paths."""
    folder = fitted(setup, "old")
    shutil.rmtree(folder / "references")
    record = json.loads((folder / "profile.json").read_text())
    del record["references"]["sha256"]
    (folder / "profile.json").write_text(json.dumps(record))
    assert Profile.load(folder).version == 1
    v2 = update_profile(setup["detector"], folder, setup["new"][:1])
    assert v2.version == 2 and len(list((folder / "references").iterdir())) == 7


def test_a_reference_gone_from_disk_and_not_stored_is_a_clear_error(setup, tmp_path):
    folder = fitted(setup, "gone")
    shutil.rmtree(folder / "references")
    record = json.loads((folder / "profile.json").read_text())
    record["references"]["sources"][0] = str(tmp_path / "moved.png")
    (folder / "profile.json").write_text(json.dumps(record))
    before = snapshot(folder)
    with pytest.raises(ProfileError, match="moved.png is not stored in the profile"):
        update_profile(setup["detector"], folder, setup["new"])
    assert snapshot(folder) == before


@pytest.fixture
def bad_images(setup, tmp_path) -> dict[str, list[str]]:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    copy = tmp_path / "copy_of_ref.png"
    shutil.copyfile(setup["refs"][2], copy)
    huge = tmp_path / "huge.png"
    Image.fromarray(np.zeros((400, 400, 3), np.uint8)).save(huge)
    return {
        "unreadable": [setup["new"][0], str(broken)],
        "missing": [str(tmp_path / "nowhere.png")],
        "duplicate of a reference": [setup["new"][0], str(copy)],
        "duplicate among the new": [setup["new"][0], setup["new"][1], setup["new"][0]],
        "over the pixel limit": [str(huge)],
    }


@pytest.mark.parametrize(
    "case, error, match",
    [
        ("unreadable", ImageLoadError, "broken.png"),
        ("missing", ProfileError, "nowhere.png: no such image file"),
        ("duplicate of a reference", ProfileError, r"copy_of_ref.png: a duplicate of reference"),
        ("duplicate among the new", ProfileError, r"img_00.png: a duplicate of .*img_00.png, also"),
        ("over the pixel limit", ImageLoadError, "huge.png"),
    ],
)
def test_bad_input_is_one_line_and_leaves_the_folder_unchanged(
    setup, bad_images, case, error, match
):
    folder = fitted(setup, "bad")
    update_profile(setup["detector"], folder, setup["new"][2:])  # a history exists too
    before = snapshot(folder)
    config = DetectorConfig.from_profile(str(folder), given={"dtype": "fp32", "max_pixels": 10_000})
    detector = Detector.from_config(config.replace(profiles=()), text_cache=False)
    with pytest.raises(error, match=match) as caught:
        update_profile(detector, folder, bad_images[case])
    assert "\n" not in str(caught.value)
    assert snapshot(folder) == before


def test_a_newer_format_and_another_setup_are_refused(setup):
    folder = fitted(setup, "newer")
    record = json.loads((folder / "profile.json").read_text())
    record["format"] = "tipsomaly-profile-9"
    (folder / "profile.json").write_text(json.dumps(record))
    before = snapshot(folder)
    with pytest.raises(ProfileError, match="written by a newer tipsomaly.*upgrade") as caught:
        update_profile(setup["detector"], folder, setup["new"])
    assert "\n" not in str(caught.value)
    with pytest.raises(ProfileError, match="newer tipsomaly"):
        Profile.load(folder)
    assert snapshot(folder) == before
    other = fitted(setup, "other-size")
    wrong = Detector(setup["model"], image_size=SIZE + 14, text_cache=False, dtype="fp32")
    with pytest.raises(ProfileMismatchError, match="image_size"):
        update_profile(wrong, other, setup["new"])


@pytest.mark.parametrize("history_first", [False, True])
@pytest.mark.parametrize("where", ["reference copy", "version record", "top record"])
def test_a_failure_while_writing_leaves_no_half_version(setup, monkeypatch, where, history_first):
    """A write error (a full disk) while the new image is copied in, while the version folder
    is written or while the top-level record is replaced leaves the folder as it was: the
    version folders and reference copies written by the call are removed."""
    folder = fitted(setup, "crash")
    if history_first:
        update_profile(setup["detector"], folder, setup["new"][:1])
    before = snapshot(folder)
    version = Profile.load(folder).version
    real_path, real_text = profile_versions.atomic_path, profile_versions.atomic_write_text

    def full(path: Path) -> None:
        hit = {
            "reference copy": "references" in Path(path).parts,
            "version record": Path(path).parent.parent.name == "versions",
            "top record": Path(path) == folder / "profile.json",
        }[where]
        if hit:
            raise OSError(28, "No space left on device")

    def atomic_path(path, *args, **kwargs):
        full(path)
        return real_path(path, *args, **kwargs)

    def atomic_write_text(path, *args, **kwargs):
        full(path)
        return real_text(path, *args, **kwargs)

    monkeypatch.setattr(profile_versions, "atomic_path", atomic_path)
    monkeypatch.setattr(profile_versions, "atomic_write_text", atomic_write_text)
    with pytest.raises(OSError, match="No space left"):
        update_profile(setup["detector"], folder, setup["new"][1:2])
    assert snapshot(folder) == before
    assert Profile.load(folder).version == version
    assert version_numbers(folder) == ([1, 2] if history_first else [])


def test_a_tiled_profile_with_a_roi_updates_as_a_fresh_fit(setup, tmp_path):
    """Tiled references are read again to be scored; the ROI travels in the folder."""
    roi = tmp_path / "roi.png"
    mask = np.zeros((84, 84), np.uint8)
    mask[:, :60] = 255
    Image.fromarray(mask).save(roi)
    tiled = Detector(
        setup["model"], image_size=SIZE, text_cache=False, dtype="fp32", tile=56, roi=str(roi)
    )
    folder = setup["root"] / "tiled"
    shutil.rmtree(folder, ignore_errors=True)
    profile = fit_profile(tiled, setup["refs"][:4], "tile", false_alarm_rate=0.2)
    store_references(
        folder, profile.info["references"]["sources"], profile.info["references"]["sha256"]
    )
    profile.save(folder)
    config = DetectorConfig.from_profile(str(folder), given={"dtype": "fp32"})
    again = Detector.from_config(config.replace(profiles=()), text_cache=False)
    v2 = update_profile(again, folder, setup["new"][:2])
    fresh = fit_profile(tiled, setup["refs"][:4] + setup["new"][:2], "tile", false_alarm_rate=0.2)
    assert v2.info["bank"]["tiles"] == fresh.info["bank"]["tiles"] > 6
    assert profile_digest(v2) == profile_digest(fresh) and v2.thresholds == fresh.thresholds
    assert Profile.load(folder).roi == str(folder / "roi.png")


def test_a_reader_loading_while_versions_are_written_never_sees_half_of_one(setup):
    """What a service's reload does: Profile.load of the folder, again and again, while an
    update and a rollback write new versions; every load succeeds and is a whole version."""
    folder = fitted(setup, "readers")
    seen: list[tuple[int, str]] = []
    errors: list[BaseException] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                p = Profile.load(folder)
                seen.append((p.version, profile_digest(p)))
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    try:
        update_profile(setup["detector"], folder, setup["new"])
        rollback(folder)
    finally:
        done.set()
        reader.join()
    assert not errors, errors[:1]
    written = {(e.version, e.digest) for e in history(folder)}
    assert set(seen) <= written and len(seen) > 3


@pytest.mark.parametrize("name", ["../bank.safetensors", "/etc/passwd", "C:bank.safetensors", ""])
def test_a_bank_named_outside_the_folder_is_refused(setup, name):
    folder = fitted(setup, "outside")
    record = json.loads((folder / "profile.json").read_text())
    record["bank_file"]["name"] = name
    (folder / "profile.json").write_text(json.dumps(record))
    with pytest.raises(ProfileError, match="bank_file.name must be a relative path inside"):
        Profile.load(folder)


def test_profile_check_drift_uses_its_calibration_scores_and_promise(setup):
    p = Profile.load(fitted(setup, "drift"))
    calib = p.thresholds.get("fused", "image")
    assert calib.attainable and calib.false_alarm_rate == 0.2  # k = ceil(7 * 0.8) = 6 <= 6
    recent = [s + 0.05 for s in p.calibration_scores["fused"]] * 3
    report = p.check_drift(recent, 18, 9)
    expected = check_drift(p.calibration_scores["fused"], recent, 18, 9, 0.2)
    assert report.to_dict() == expected.to_dict() and report.drifted
    zero = p.check_drift([0.5], 0, 0, mode="zero-shot")
    assert zero.calibration_median == pytest.approx(np.median(p.calibration_scores["zero-shot"]))
    # too few references for 0.01: the threshold is their maximum, which promises 1/7
    few = fit_profile(setup["detector"], setup["refs"], "tile", false_alarm_rate=0.01)
    assert few.check_drift([], 14, 2).promised_rate == pytest.approx(1 / 7)
    assert "promises 14.3 %" in few.check_drift([], 14, 11).reasons[0]
