"""``tipsomaly fit`` and ``predict --profile`` end to end on the tiny golden model.

Textures of one kind are the normal class; a dark square drawn on them is the defect. The
tiny model's weights are random, so zero-shot scores are noise, while the distance to normal
references separates drawn defects: the tests lean on that only where they say so.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthetic import tiny_model_dir
from tipsomaly.cli.main import main
from tipsomaly.method.calibration import conformal_threshold
from tipsomaly.method.detector import Detector
from tipsomaly.method.fitting import fit_profile
from tipsomaly.method.profile import (
    NotCalibratedError,
    Profile,
    ProfileError,
    ProfileMismatchError,
)

SIZE = 70


def texture(rng: np.random.Generator, h: int = 84, w: int = 84) -> np.ndarray:
    base = rng.random((h // 6 + 1, w // 6 + 1))
    img = np.kron(base, np.ones((6, 6)))[:h, :w] * 0.6 + 0.4 * rng.random((h, w))
    return (np.stack([img, img * 0.95, img * 0.85], -1) * 255).astype(np.uint8)


def write_images(folder: Path, n: int, seed: int, defect: bool = False) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = texture(rng)
        if defect:
            img[20:40, 30:50] = 10
        path = folder / f"img_{i:02d}.png"
        Image.fromarray(img).save(path)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fit")
    write_images(root / "refs", 8, seed=1)
    write_images(root / "test" / "good", 6, seed=2)
    write_images(root / "test" / "bad", 6, seed=3, defect=True)
    return {"root": root, "model": tiny_model_dir(root / "model")}


@pytest.fixture(scope="module")
def profile_dir(data) -> Path:
    out = data["root"] / "profile"
    code = main(
        ["fit", str(data["root"] / "refs"), "--class-name", "tile", "--model", str(data["model"]),
         "--image-size", str(SIZE), "--false-alarm-rate", "0.2", "--out", str(out), "-q",
         # fp32 as the detectors below: `auto` is bf16 on CPUs with bf16 instructions
         "--dtype", "fp32"]
    )  # fmt: skip
    assert code == 0
    return out


def detector(model: Path, **kw) -> Detector:
    return Detector(model, image_size=SIZE, text_cache=False, **kw)


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- fit ---------------------------------------------------------------------------------------
def test_fit_writes_a_profile_with_thresholds_per_mode(profile_dir, data):
    record = json.loads((profile_dir / "profile.json").read_text())
    assert record["format"] == "tipsomaly-profile-1"
    assert record["class_name"] == "tile" and record["mode"] == "fused"
    assert record["references"]["used"] == 8 and record["references"]["failed"] == 0
    assert record["bank"]["patches"] == 8 * (SIZE // 14) ** 2
    assert record["identity"]["image_size"] == SIZE
    assert record["settings"]["model"] == str(data["model"].resolve())
    for mode in ("zero-shot", "few-shot", "fused"):
        image = record["thresholds"][mode]["image"]
        # 8 scores at 0.2: k = ceil(9 * 0.8) = 8, the bound 1 - 8/9
        assert image["n"] == 8 and image["k"] == 8 and image["attainable"]
        assert image["guaranteed_rate"] == pytest.approx(1 / 9)
        scores = record["calibration"]["scores"][mode]
        assert image["threshold"] == conformal_threshold(scores, 0.2).threshold
        assert image["threshold"] > max(scores)  # k = n: above every calibration score
    rows = read_rows(profile_dir / "calibration.csv")
    assert [Path(r["path"]).name for r in rows] == [f"img_{i:02d}.png" for i in range(8)]
    fused = [float(r["score_fused"]) for r in rows]
    np.testing.assert_allclose(fused, record["calibration"]["scores"]["fused"], atol=1e-6)


def test_calibration_leaves_each_reference_out_of_its_own_search(data, profile_dir):
    """Reference i's few-shot score equals its score against a bank fitted without it (a
    reference scored against itself would score ~0 and the threshold would flag everything)."""
    refs = sorted((data["root"] / "refs").glob("*.png"))
    det = detector(data["model"])
    fitted = Profile.load(profile_dir)
    loo = fitted.info["calibration"]["scores"]["few-shot"]
    for i in (0, 5):
        others = [r for j, r in enumerate(refs) if j != i]
        without = fit_profile(det, others, "tile", calibrate=False)
        det.set_profiles(without, mode="few-shot")
        (pred,) = det.predict(refs[i], "tile")
        assert pred.image_score == pytest.approx(loo[i], abs=1e-5)
        det.set_profiles(fitted, mode="few-shot")
        (self_scored,) = det.predict(refs[i], "tile")
        assert self_scored.image_score < loo[i] / 10  # in the bank: distance ~0


def test_profile_save_load_round_trip(profile_dir, tmp_path):
    p = Profile.load(profile_dir)
    p.save(tmp_path / "copy")
    q = Profile.load(tmp_path / "copy")
    assert q.class_name == p.class_name and q.identity == p.identity
    for name in ("patches", "cls1", "cls2"):
        a, b = getattr(p.bank, name), getattr(q.bank, name)
        assert torch.equal(a.features, b.features) and torch.equal(a.sources, b.sources)
    assert q.thresholds == p.thresholds


def test_augment_and_coreset_sizes(data, tmp_path):
    refs = sorted((data["root"] / "refs").glob("*.png"))[:2]
    det = detector(data["model"])
    grid = (SIZE // 14) ** 2
    aug = fit_profile(det, refs, "tile", augment=True, calibrate=False)
    assert len(aug.bank.patches) == 2 * 8 * grid and len(aug.bank.cls1) == 16
    small = fit_profile(det, refs, "tile", max_bank=17, calibrate=False)
    assert len(small.bank.patches) == 17 and small.info["bank"]["coreset"]
    assert small.info["bank"]["patches_before_coreset"] == 2 * grid


def test_one_reference_calibrates_zero_shot_only(data, tmp_path, caplog):
    refs = sorted((data["root"] / "refs").glob("*.png"))[:1]
    p = fit_profile(detector(data["model"]), refs, "tile")
    assert p.thresholds.get("zero-shot", "image") is not None
    assert not p.thresholds.get("zero-shot", "image").attainable  # 1 score cannot give 0.01
    assert p.thresholds.get("fused", "image") is None
    with pytest.raises(NotCalibratedError, match="at least 2"):
        p.image_threshold("fused")
    # predict still scores, with no decision and a warning saying why
    p.save(tmp_path / "one")
    out = tmp_path / "pred"
    code = main(
        ["predict", str(data["root"] / "test"), "--class-name", "tile", "--profile",
         str(tmp_path / "one"), "--out", str(out), "--no-overlays", "-q"]
    )  # fmt: skip
    assert code == 0
    rows = read_rows(out / "scores.csv")
    assert all(r["is_anomalous"] == "" and r["mode"] == "fused" for r in rows)
    assert "no calibrated image or pixel threshold" in caplog.text


# -- predict --profile ---------------------------------------------------------------------
def test_predict_with_profile_decides_at_the_calibrated_thresholds(data, profile_dir, tmp_path):
    out = tmp_path / "pred"
    code = main(
        ["predict", str(data["root"] / "test"), "--class-name", "tile", "--profile",
         str(profile_dir), "--save-maps", "--no-overlays", "--out", str(out), "-q"]
    )  # fmt: skip
    assert code == 0  # no --model / --image-size: the profile's
    profile = Profile.load(profile_dir)
    image_t, pixel_t = profile.image_threshold("fused"), profile.pixel_threshold("fused")
    rows = read_rows(out / "scores.csv")
    assert len(rows) == 12
    for r in rows:
        assert r["mode"] == "fused" and float(r["threshold"]) == pytest.approx(image_t, abs=1e-6)
        assert r["is_anomalous"] == ("true" if float(r["image_score"]) >= image_t else "false")
        amap = np.load(out / "maps" / f"{r['name']}.npy")
        mask = np.asarray(Image.open(out / "masks" / f"{r['name']}.png")) > 0
        np.testing.assert_array_equal(mask, amap >= np.float32(pixel_t))
    # few-shot evidence separates the drawn squares even with random weights
    bad = [r["is_anomalous"] for r in rows if "/bad/" in r["path"]]
    assert bad == ["true"] * 6
    settings = json.loads((out / "scores.json").read_text())["settings"]
    assert settings["mode"] == "fused" and settings["profiles"] == {"tile": str(profile_dir)}


def test_zero_shot_mode_with_a_profile_scores_as_without(data, profile_dir):
    paths = sorted((data["root"] / "test").rglob("*.png"))
    plain = detector(data["model"]).predict(paths, "tile")
    with_profile = detector(data["model"], profile=profile_dir, mode="zero-shot").predict(
        paths, "tile"
    )
    zs = Profile.load(profile_dir).image_threshold("zero-shot")
    for a, b in zip(plain, with_profile, strict=True):
        assert a.image_score == b.image_score
        np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
        assert b.mode == "zero-shot" and b.threshold == zs and a.threshold is None


def test_profiles_chosen_by_class_name(data, profile_dir, tmp_path):
    root = tmp_path / "by-class"
    write_images(root / "tile", 2, seed=4)
    write_images(root / "wood", 2, seed=5)
    # a second class "wood" from other references
    wood = tmp_path / "wood-profile"
    assert main(
        ["fit", str(data["root"] / "test" / "good"), "--class-name", "wood", "--model",
         str(data["model"]), "--image-size", str(SIZE), "--out", str(wood), "-q"]
    ) == 0  # fmt: skip
    out = tmp_path / "pred"
    code = main(
        ["predict", str(root), "--class-from-folder", "--profile", str(profile_dir), str(wood),
         "--no-overlays", "--out", str(out), "-q"]
    )  # fmt: skip
    assert code == 0
    rows = read_rows(out / "scores.csv")
    thresholds = {
        "tile": Profile.load(profile_dir).image_threshold(),
        "wood": Profile.load(wood).image_threshold(),
    }
    assert sorted(r["class_name"] for r in rows) == ["tile", "tile", "wood", "wood"]
    for r in rows:
        assert float(r["threshold"]) == pytest.approx(thresholds[r["class_name"]], abs=1e-6)


def test_a_batch_mixing_classes_with_and_without_a_profile(data, profile_dir):
    paths = sorted((data["root"] / "test").rglob("*.png"))[:4]
    det = detector(data["model"], profile=profile_dir)
    mixed = det.predict(paths, ["tile", "other", "tile", "other"])
    alone = det.predict([paths[0], paths[2]], "tile")
    plain = detector(data["model"]).predict([paths[1], paths[3]], "other")
    assert [p.mode for p in mixed] == ["fused", "zero-shot", "fused", "zero-shot"]
    assert mixed[0].image_score == pytest.approx(alone[0].image_score, abs=1e-6)
    assert mixed[2].image_score == pytest.approx(alone[1].image_score, abs=1e-6)
    assert mixed[1].image_score == pytest.approx(plain[0].image_score, abs=1e-6)


# -- bad input: one line each, the README's exit codes ---------------------------------------
def _fit(data, paths, out, *extra):
    return main(
        ["fit", *map(str, paths), "--class-name", "tile", "--model", str(data["model"]),
         "--image-size", str(SIZE), "--out", str(out), "-q", *extra]
    )  # fmt: skip


def _one_line_error(capsys, *needles):
    err = capsys.readouterr().err.strip().splitlines()
    line = [e for e in err if e.startswith("tipsomaly: error:")]
    assert len(line) == 1, err
    for needle in needles:
        assert needle in line[0], line[0]
    return line[0]


def test_fit_bad_references(data, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _fit(data, [empty], tmp_path / "p0") == 2
    _one_line_error(capsys, "no input images")
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "a.png").write_bytes(b"not an image")
    assert _fit(data, [junk], tmp_path / "p1") == 1
    _one_line_error(capsys, "no reference image", "a.png")
    assert not (tmp_path / "p1" / "profile.json").exists()
    # some unreadable: reported, the rest used, exit 3
    assert _fit(data, [junk, data["root"] / "refs"], tmp_path / "p2") == 3
    record = json.loads((tmp_path / "p2" / "profile.json").read_text())
    assert record["references"]["used"] == 8 and record["references"]["failed"] == 1
    assert record["references"]["errors"][0]["path"].endswith("a.png")


def test_fit_reports_an_unattainable_rate(data, tmp_path, capsys):
    assert _fit(data, [data["root"] / "refs"], tmp_path / "p") == 0  # default 0.01
    out = capsys.readouterr().out
    assert "cannot guarantee a false-alarm rate of 0.01 (needs at least 99)" in out
    assert "guarantees 0.1111" in out  # 1/(8+1)
    record = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert record["thresholds"]["fused"]["image"]["attainable"] is False


def _predict(data, profile, out, *extra):
    return main(
        ["predict", str(data["root"] / "test" / "good"), "--class-name", "tile", "--profile",
         str(profile), "--out", str(out), "--no-overlays", "-q", *extra]
    )  # fmt: skip


def test_predict_refuses_a_profile_from_another_setup(data, profile_dir, tmp_path, capsys):
    other = tiny_model_dir(tmp_path / "other-model")
    vision = dict(np.load(other / "vision.npz", allow_pickle=False))
    key = next(k for k in vision if vision[k].dtype.kind == "f")
    vision[key] = vision[key] + 0.01
    np.savez(other / "vision.npz", **vision)
    assert _predict(data, profile_dir, tmp_path / "o1", "--model", str(other)) == 1
    _one_line_error(capsys, "fitted with another setup", "model")
    assert _predict(data, profile_dir, tmp_path / "o2", "--sigma", "1") == 1
    _one_line_error(capsys, "sigma 4.0 (this run: 1.0)")
    with pytest.raises(ProfileMismatchError, match="image_size 70 .this run: 84."):
        Detector(data["model"], image_size=84, text_cache=False, profile=profile_dir)


def test_predict_refuses_damaged_or_missing_profiles(data, profile_dir, tmp_path, capsys):
    import shutil

    damaged = tmp_path / "damaged"
    shutil.copytree(profile_dir, damaged)
    raw = bytearray((damaged / "bank.safetensors").read_bytes())
    raw[-5] ^= 0xFF
    (damaged / "bank.safetensors").write_bytes(bytes(raw))
    assert _predict(data, damaged, tmp_path / "o1") == 1
    _one_line_error(capsys, "bank.safetensors", "damaged")
    (damaged / "profile.json").write_text("{not json")
    assert _predict(data, damaged, tmp_path / "o2") == 1
    _one_line_error(capsys, "profile.json", "unreadable profile")
    assert _predict(data, tmp_path / "nowhere", tmp_path / "o3") == 1
    _one_line_error(capsys, "nowhere", "tipsomaly fit")
    assert main(
        ["predict", str(data["root"] / "test"), "--class-name", "bolt", "--profile",
         str(profile_dir), "--out", str(tmp_path / "o4"), "-q"]
    ) == 1  # fmt: skip
    _one_line_error(capsys, "no profile for class 'bolt'", "'tile'")
    assert main(
        ["predict", str(data["root"] / "test"), "--class-name", "tile", "--mode", "fused",
         "--model", str(data["model"]), "--out", str(tmp_path / "o5"), "-q"]
    ) == 1  # fmt: skip
    _one_line_error(capsys, "--mode needs --profile")
    with pytest.raises(ProfileError, match="two profiles of class 'tile'"):
        Detector(data["model"], image_size=SIZE, text_cache=False, profile=[profile_dir] * 2)


def test_overlays_with_a_profile_put_the_pixel_threshold_at_the_middle_colour(
    data, profile_dir, tmp_path
):
    from tipsomaly.report.overlay import jet

    bad = data["root"] / "test" / "bad" / "img_00.png"
    out = tmp_path / "pred"
    args = ["predict", str(bad), "--class-name", "tile", "--profile", str(profile_dir)]
    assert main([*args, "--save-maps", "--no-boxes", "--out", str(out), "-q"]) == 0
    settings = json.loads((out / "scores.json").read_text())["settings"]
    assert settings["overlay_scale"] == "threshold"
    t = Profile.load(profile_dir).pixel_threshold("fused")
    amap = np.load(out / "maps" / "img_00.npy")
    shown = np.asarray(Image.open(out / "overlays" / "img_00.png").convert("RGB"), np.float32)
    image = np.asarray(Image.open(bad).convert("RGB"), np.float32)
    heat = jet(np.clip(amap / (2 * t), 0, 1)).astype(np.float32)
    np.testing.assert_allclose(shown, 0.5 * image + 0.5 * heat, atol=1.0)


def test_fit_with_a_profile_takes_its_settings_tiling_and_roi_included(data, tmp_path, capsys):
    """`fit --profile OLD` fits a new profile of OLD's setup (a line refits with new good
    images); an option contradicting OLD's setup is refused before the model loads."""
    roi = np.zeros((84, 84), np.uint8)
    roi[:, :60] = 255
    Image.fromarray(roi).save(tmp_path / "roi.png")
    old = tmp_path / "old"
    base = ["fit", str(data["root"] / "refs"), "--class-name", "tile", "-q", "--dtype", "fp32"]
    model = ["--model", str(data["model"]), "--image-size", str(SIZE)]
    assert main([*base, *model, "--tile", "56", "--roi", str(tmp_path / "roi.png"),
                 "--out", str(old)]) == 0  # fmt: skip
    new = tmp_path / "new"
    refs = str(data["root"] / "test" / "good")
    assert main(["fit", refs, "--class-name", "tile", "-q", "--profile", str(old),
                 "--dtype", "fp32", "--out", str(new)]) == 0  # fmt: skip
    a, b = (Profile.load(p) for p in (old, new))
    assert b.identity == a.identity  # model, size, prompts, sigma, cls, tiling and ROI
    assert b.info["settings"]["tile"] == 56 and (new / "roi.png").is_file()
    assert b.info["references"]["used"] == 6  # its own references, not OLD's bank
    capsys.readouterr()
    argv = ["fit", refs, "--class-name", "tile", "--profile", str(old), "--tile", "84"]
    assert main([*argv, "--out", str(tmp_path / "no")]) == 1
    err = capsys.readouterr().err
    assert "tiling tile 56, overlap 0.25 (this run: tile 84, overlap 0.25)" in err
    assert not (tmp_path / "no" / "profile.json").exists()
