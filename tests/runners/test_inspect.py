"""Inspection outputs end to end: ROI masks, defect records, tiles in predict, fit and eval."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from synthetic import mvtec_tree, tiny_model_dir
from tipsomaly.cli.main import main
from tipsomaly.data.roi import (
    RoiError,
    as_roi,
    boxes_touching,
    find_roi,
    fit_roi,
    roi_cells,
)
from tipsomaly.method.defects import rle_decode
from tipsomaly.method.detector import Detector
from tipsomaly.method.fitting import fit_profile
from tipsomaly.method.head import BatchScores
from tipsomaly.metrics import pixel_metrics, roi_pixel_metrics
from tipsomaly.runners.evaluate import EvalConfig, Evaluator
from tipsomaly.runners.predict import run_predict
from tipsomaly.runners.store import sample_keys

SIZE = 70


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("model"))


def _save(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def _noise(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(40, 220, (h, w, 3)).astype(np.uint8)


# -- ROI helpers --------------------------------------------------------------------------------
def test_roi_inputs_white_is_inspected():
    grey = np.array([[0, 127], [128, 255]], np.uint8)
    assert as_roi(grey).tolist() == [[False, False], [True, True]]
    assert as_roi(np.array([[0.0, 0.6]])).tolist() == [[False, True]]
    assert as_roi(np.array([[False, True]])).tolist() == [[False, True]]
    assert as_roi(Image.fromarray(grey)).tolist() == [[False, False], [True, True]]
    with pytest.raises(RoiError, match="H, W"):
        as_roi(np.zeros((2, 2, 2, 2)))


def test_fit_roi_resizes_with_the_mask_rule_and_says_so():
    roi = np.zeros((10, 10), bool)
    roi[:, :5] = True
    same, resized = fit_roi(roi, (10, 10))
    assert same is roi and not resized
    big, resized = fit_roi(roi, (20, 40))
    assert resized and big.shape == (20, 40)
    assert big[:, :19].all() and not big[:, 21:].any()


def test_roi_cells_half_inside_else_the_largest_share():
    roi = np.zeros((70, 70), bool)
    roi[:, :21] = True  # columns 0-20: cell 0 whole, cell 1 half (14-20 of 14-27)
    cells = roi_cells(roi, (5, 5)).reshape(5, 5)
    assert cells[:, 0].all() and cells[:, 1].all() and not cells[:, 2:].any()
    tiny = np.zeros((70, 70), bool)
    tiny[30:33, 30:33] = True  # 9 px inside cell (2, 2) only
    assert np.flatnonzero(roi_cells(tiny, (5, 5))).tolist() == [12]
    assert not roi_cells(np.zeros((70, 70), bool), (5, 5)).any()


def test_find_roi_by_name_then_stem(tmp_path):
    roi_dir = tmp_path / "rois"
    _save(roi_dir / "a" / "x.png", np.zeros((2, 2), np.uint8))
    _save(roi_dir / "y.bmp", np.zeros((2, 2), np.uint8))
    assert find_roi(roi_dir, ["a/x", "x"]) == roi_dir / "a" / "x.png"
    assert find_roi(roi_dir, ["b/y", "y"]) == roi_dir / "y.bmp"
    assert find_roi(roi_dir, ["b/z", "z"]) is None
    _save(roi_dir / "y.png", np.zeros((2, 2), np.uint8))
    with pytest.raises(RoiError, match="several masks for y"):
        find_roi(roi_dir, ["y"])


def test_boxes_touching():
    roi = np.zeros((10, 10), bool)
    roi[8, 8] = True
    boxes = [(0, 0, 5, 5), (5, 5, 10, 10), (0, 5, 5, 10)]
    assert boxes_touching(roi, boxes) == [1]


# -- the detector with an ROI -------------------------------------------------------------------
@pytest.mark.parametrize("tile", [None, 40])
def test_an_all_white_roi_changes_nothing(model, tile):
    det = Detector(model, image_size=SIZE, text_cache=False, tile=tile)
    image = _noise(90, 120)
    plain = det.predict(image, "tile")[0]
    white = det.predict(image, "tile", roi=np.ones((90, 120), bool))[0]
    assert white.image_score == plain.image_score
    assert white.score_cls2 == plain.score_cls2
    np.testing.assert_array_equal(white.anomaly_map_original, plain.anomaly_map_original)


def test_untiled_roi_scores_the_patch_cells_inside_and_zeroes_the_map(model):
    det = Detector(model, image_size=SIZE, text_cache=False)
    image = _noise(SIZE, SIZE, seed=1)
    roi = np.zeros((SIZE, SIZE), bool)
    roi[:, :28] = True  # patch columns 0 and 1
    pred = det.predict(image, "tile", roi=roi)[0]
    from tipsomaly.data.images import preprocess

    scores = det.score_batch(preprocess(image, SIZE)[None], "tile")
    patch = scores.patch_probs[0, :, 1].reshape(5, 5)
    expected = float(scores.global_probs_cls1[0, 1] + patch[:, :2].max())
    assert pred.score_cls1 == pytest.approx(expected, abs=1e-7)
    assert pred.evidence["local"] == pytest.approx(float(patch[:, :2].max()))
    assert (pred.anomaly_map_original[:, 28:] == 0).all()
    assert (pred.anomaly_map_original[:, :28] > 0).all()
    assert (pred.anomaly_map[:, 28:] == 0).all()


def test_tiled_roi_scores_only_the_tiles_it_touches(model):
    det = Detector(model, image_size=SIZE, text_cache=False, tile=50, tile_overlap=0.0)
    image = _noise(100, 200, seed=2)
    roi = np.zeros((100, 200), bool)
    roi[10:40, 120:140] = True  # inside tile (0, 2) only
    pred = det.predict(image, "tile", roi=roi)[0]
    assert det.tile_grid((100, 200)).shape == (2, 4)
    assert pred.tiles == 1
    m = pred.anomaly_map_original
    assert (m[~roi] == 0).all() and (m[roi] > 0).all()
    assert pred.evidence["local"] == pytest.approx(float(m[roi].max()))
    whole = Detector(model, image_size=SIZE, text_cache=False).predict(
        image[0:50, 100:150], "tile"
    )[0]
    assert pred.evidence["global_cls1"] == pytest.approx(whole.evidence["global_cls1"], abs=1e-6)


def test_roi_of_another_size_is_resized_with_a_note_and_an_empty_one_refused(model):
    det = Detector(model, image_size=SIZE, text_cache=False)
    small = np.zeros((9, 12), bool)
    small[:, :6] = True
    pred = det.predict(_noise(90, 120), "tile", roi=small)[0]
    assert pred.notes == ["ROI mask of 12x9 px resized to the image's 120x90"]
    assert (pred.anomaly_map_original[:, 61:] == 0).all()
    empty = det.predict(_noise(90, 120), "tile", roi=np.zeros((9, 12), bool), on_error="record")
    assert "no white pixel" in empty[0].error


# -- predict: defects against a stand-in network ------------------------------------------------
def _painted_network(det: Detector) -> None:
    """Replace the network: an image's map is its red channel (/255), global evidence 0.1,
    patch evidence the map's mean per 14-px cell. A 70x70 image's map is then exactly what
    was painted (the resize to the original size is the identity)."""

    def score_batch(images: torch.Tensor, class_names) -> BatchScores:
        b = images.shape[0]
        maps = images[:, 0].float()
        cells = F.avg_pool2d(maps[:, None], 14)[:, 0].reshape(b, -1)
        patch = torch.stack([1 - cells, cells], dim=-1)
        glob = torch.tensor([[0.9, 0.1]]).expand(b, 2)
        local = cells.amax(dim=1)
        return BatchScores(glob, glob, patch, 0.1 + local, 0.1 + local, maps)

    det.score_batch = score_batch  # type: ignore[method-assign]


def _painted_image() -> np.ndarray:
    """Red channel = the map: background 0.2, three defects of 0.8-1.0."""
    red = np.full((SIZE, SIZE), 51, np.uint8)  # 0.2
    red[5:15, 10:30] = 204  # 10 x 20 = 200 px
    red[8, 12] = 255  # its peak
    red[40:44, 40:43] = 230  # 4 x 3 = 12 px
    red[60, 5] = 220  # a speck
    red[30:32, 60:70] = 210  # 2 x 10 = 20 px, right of the ROI below
    img = np.zeros((SIZE, SIZE, 3), np.uint8)
    img[..., 0] = red
    return img


def test_defect_records_of_hand_painted_maps_are_exact(model, tmp_path):
    images = tmp_path / "images"
    _save(images / "painted.png", _painted_image())
    roi = np.full((SIZE, SIZE), 255, np.uint8)
    roi[:, 55:] = 0  # the 2 x 10 defect is outside
    roi_path = _save(tmp_path / "roi.png", roi)
    det = Detector(
        model,
        image_size=SIZE,
        text_cache=False,
        pixel_threshold=0.5,
        roi=roi_path,
        min_defect_area=2,
        pixel_size_mm=0.1,
        defects_format="coco",
    )
    _painted_network(det)
    out = tmp_path / "out"
    summary = run_predict(det, [images], class_name="tile", out_dir=out, save_maps=True, boxes=True)
    assert summary.ok == 1
    row = json.loads((out / "scores.json").read_text())["results"][0]
    defects = row["defects"]
    assert [(d["id"], d["bbox"], d["area_px"]) for d in defects] == [
        (1, [10, 5, 30, 15], 200),
        (2, [40, 40, 43, 44], 12),
    ]  # the speck (1 px) is under --min-defect-area, the right one outside the ROI
    assert defects[0]["peak"] == pytest.approx(1.0)
    assert defects[0]["mean"] == pytest.approx((199 * 204 + 255) / 200 / 255, rel=1e-6)
    assert defects[0]["centroid"] == pytest.approx([19.5, 9.5])
    assert defects[0]["area_mm2"] == pytest.approx(2.0)
    region = rle_decode(defects[1]["rle"])
    assert region.sum() == 12 and region[40:44, 40:43].all()
    # the image score: global 0.1 + the highest patch cell inside the ROI
    m = np.load(out / "maps" / "painted.npy")
    assert (m[:, 55:] == 0).all()
    cells = m.reshape(5, 14, 5, 14).mean(axis=(1, 3))
    assert row["image_score"] == pytest.approx(0.1 + cells[:, :4].max(), abs=1e-6)
    # defects.csv: one line per record, the same numbers
    with open(out / "defects.csv", newline="") as fh:
        lines = list(csv.DictReader(fh))
    assert [(r["name"], r["defect"], r["x0"], r["y1"], r["area_px"]) for r in lines] == [
        ("painted", "1", "10", "15", "200"),
        ("painted", "2", "40", "44", "12"),
    ]
    assert float(lines[0]["area_mm2"]) == pytest.approx(2.0)
    with open(out / "scores.csv", newline="") as fh:
        assert next(csv.DictReader(fh))["defects"] == "2"
    coco = json.loads((out / "defects_coco.json").read_text())
    assert [c["bbox"] for c in coco] == [[10, 5, 20, 10], [40, 40, 3, 4]]
    assert coco[0]["image_id"] == "painted" and coco[0]["area"] == 200
    mask = np.asarray(Image.open(out / "masks" / "painted.png")) > 0
    assert mask.sum() == 200 + 12 + 1  # inside the ROI only (the speck is in the mask)
    # boxes: drawn around the defects, nothing else changed
    plain = tmp_path / "plain"
    run_predict(det, [images], class_name="tile", out_dir=plain, boxes=False)
    boxed = np.asarray(Image.open(out / "overlays" / "painted.png"), np.int16)
    unboxed = np.asarray(Image.open(plain / "overlays" / "painted.png"), np.int16)
    changed = np.abs(boxed - unboxed).sum(axis=2) > 0
    near = np.zeros_like(changed)
    for d in defects:
        x0, y0, x1, y1 = d["bbox"]
        near[max(0, y0 - 16) : y1 + 4, max(0, x0 - 4) : x1 + 40] = True
    assert changed.any() and not (changed & ~near).any()


def test_predict_cli_tiles_roi_dir_missing_masks_and_notes(model, tmp_path, capsys):
    images = tmp_path / "images"
    for name, (h, w) in {
        "a/one.png": (120, 160),
        "b/two.png": (90, 90),
        "three.png": (80, 80),
    }.items():
        _save(images / name, _noise(h, w))
    rois = tmp_path / "rois"
    left = np.zeros((120, 160), np.uint8)
    left[:, :80] = 255
    _save(rois / "a" / "one.png", left)
    _save(rois / "two.png", np.full((30, 30), 255, np.uint8))  # by stem; resized
    out = tmp_path / "out"
    code = main(
        ["predict", str(images), "--class-name", "tile", "--model", str(model),
         "--image-size", str(SIZE), "--tile", "64", "--roi-dir", str(rois), "--threshold",
         "0.3", "--save-maps", "--out", str(out), "-q"]
    )  # fmt: skip
    assert code == 3  # three.png has no mask: an error row
    doc = json.loads((out / "scores.json").read_text())
    rows = {r["name"]: r for r in doc["results"]}
    assert rows["three"]["status"] == "error"
    assert "no ROI mask for it" in rows["three"]["error"]
    assert rows["three"]["defects"] is None
    assert rows["b/two"]["note"] == "ROI mask of 30x30 px resized to the image's 90x90"
    assert rows["a/one"]["note"] is None
    m = np.load(out / "maps" / "a" / "one.npy")
    assert m.shape == (120, 160) and (m[:, 80:] == 0).all()
    assert all(d["bbox"][2] <= 80 for d in rows["a/one"]["defects"])
    settings = doc["settings"]
    assert settings["tile"] == 64 and settings["tile_overlap"] == 0.25
    assert settings["roi_dir"] == str(rois) and "ROI" in settings["image_score"]
    assert settings["defects"]["min_area_px"] == 1
    capsys.readouterr()


def test_predict_cli_refuses_bad_roi_options(model, tmp_path, capsys):
    images = tmp_path / "images"
    _save(images / "x.png", _noise(40, 40))
    black = _save(tmp_path / "black.png", np.zeros((4, 4), np.uint8))
    base = ["predict", str(images), "--class-name", "tile", "--model", str(model),
            "--image-size", str(SIZE), "--out", str(tmp_path / "out"), "-q"]  # fmt: skip
    assert main([*base, "--roi", str(black)]) == 1
    assert "no white pixel" in capsys.readouterr().err
    assert main([*base, "--roi", str(tmp_path / "missing.png")]) == 1
    assert "missing.png" in capsys.readouterr().err
    assert main([*base, "--roi-dir", str(black)]) == 1
    assert "not a folder" in capsys.readouterr().err
    for bad in (["--roi", str(black), "--roi-dir", str(tmp_path)], ["--tile", "0"]):
        with pytest.raises(SystemExit) as exc:  # usage errors: one line, status 1
            main([*base, *bad])
        assert exc.value.code == 1
    capsys.readouterr()


# -- profiles fitted with tiles -----------------------------------------------------------------
def test_a_profile_fitted_with_tiles_is_used_with_tiles(model, tmp_path, capsys):
    refs = tmp_path / "refs"
    for i in range(3):
        _save(refs / f"r{i}.png", _noise(100, 130, seed=10 + i))
    profile = tmp_path / "profile"
    common = ["--model", str(model), "--image-size", str(SIZE)]
    assert main(["fit", str(refs), "--class-name", "tile", "--out", str(profile), *common,
                 "--tile", "60", "--tile-overlap", "0.2", "-q"]) == 0  # fmt: skip
    record = json.loads((profile / "profile.json").read_text())
    assert record["identity"]["tiling"] == {"tile": 60, "overlap": 0.2}
    assert record["settings"]["tile"] == 60 and record["bank"]["tiles"] == 3 * 6
    assert record["bank"]["patches"] == 3 * 6 * 25
    images = tmp_path / "images"
    _save(images / "x.png", _noise(100, 130, seed=20))
    out = tmp_path / "out"
    assert main(["predict", str(images), "--class-name", "tile", "--profile", str(profile),
                 "--out", str(out), "-q"]) == 0  # fmt: skip
    settings = json.loads((out / "scores.json").read_text())["settings"]
    assert settings["tile"] == 60 and settings["tile_overlap"] == 0.2
    row = json.loads((out / "scores.json").read_text())["results"][0]
    assert isinstance(row["defects"], list)  # the profile's pixel threshold
    capsys.readouterr()
    code = main(["predict", str(images), "--class-name", "tile", "--profile", str(profile),
                 "--tile", "80", "--out", str(tmp_path / "o2"), "-q"])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "tiling tile 60, overlap 0.2 (this run: tile 80, overlap 0.2)" in err


def test_tiled_calibration_scores_each_reference_as_a_tiled_prediction(model, tmp_path):

    refs = [_noise(100, 130, seed=30 + i) for i in range(3)]
    det = Detector(model, image_size=SIZE, text_cache=False, tile=60)
    profile = fit_profile(det, refs, "tile")
    scores = profile.info["calibration"]["scores"]
    # reference 0 against a bank without its tiles, in few-shot mode
    others = fit_profile(det, refs[1:], "tile", calibrate=False)
    det.set_profiles([others], "few-shot")
    alone = det.predict(refs[0], "tile")[0]
    assert scores["few-shot"][0] == pytest.approx(alone.image_score, abs=1e-5)
    assert profile.thresholds.get("few-shot", "pixel") is not None


# -- eval -------------------------------------------------------------------------------------
def test_roi_pixel_metrics_equal_the_metrics_of_the_cropped_maps():
    rng = np.random.default_rng(5)
    n, s = 4, 40
    maps = rng.random((n, s, s)).astype(np.float32)
    masks = np.zeros((n, s, s), bool)
    masks[0, 5:15, 5:30] = True  # crosses the ROI's edge: its inside part counts
    masks[1, 20:25, 10:12] = True
    masks[1, 30:33, 18:20] = True
    masks[2, 2:4, 2:4] = True  # wholly outside the ROI
    maps[masks] += 0.4
    valid = np.zeros((n, s, s), bool)
    valid[:, 8:36, 6:34] = True
    crop = (slice(None), slice(8, 36), slice(6, 34))
    for aupro in ("zsad", "mvtec"):
        ours = roi_pixel_metrics(maps, masks, valid, aupro=aupro)
        want = pixel_metrics(maps[crop], masks[crop], aupro=aupro)
        for key, value in want.items():
            assert ours[key] == pytest.approx(value, abs=1e-12), (aupro, key)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, model):
    base = tmp_path_factory.mktemp("inspect-eval")
    root = mvtec_tree(base / "mini", {"bottle": (3, 3)}, size=96, seed=4)
    roi = np.full((96, 96), 255, np.uint8)
    roi[:, 64:] = 0
    return {"root": root, "roi": _save(base / "roi.png", roi), "base": base}


def test_eval_with_tiles_scores_as_predict_does_and_records_it(model, dataset, tmp_path):
    root = dataset["root"]
    out = tmp_path / "ev"
    argv = ["eval", "--data", str(root), "--model", str(model), "--image-size", str(SIZE),
            "--tile", "48", "--roi", str(dataset["roi"]), "--workers", "0", "--out", str(out),
            "-q"]  # fmt: skip
    assert main(argv) == 0
    config = json.loads((out / "results.json").read_text())["config"]
    assert config["settings"]["tile"] == 48 and config["settings"]["roi"] == str(dataset["roi"])
    assert "left out of the pixel metrics" in config["roi"]["pixel_metrics"]
    assert config["tiling"]["overlap"] == 0.25
    # the stored rows give predict's scores
    settings = EvalConfig(
        model=str(model), image_size=SIZE, tile=48, roi=str(dataset["roi"]), workers=0
    )
    store = Evaluator(settings, out).store_for("mini")
    rows = store.open_class("bottle").rows
    meta = json.loads((root / "meta.json").read_text())["test"]["bottle"]
    det = Detector(model, image_size=SIZE, text_cache=False, tile=48)
    for entry in meta:
        path = root / entry["img_path"]
        mask = root / entry["mask_path"] if entry["mask_path"] else None
        key, _ = sample_keys("bottle", path, entry["anomaly"], mask)
        pred = det.predict(path, "bottle", roi=str(dataset["roi"]))[0]
        pair = rows[key]["global_probs_cls1"]
        assert float(pair.sum()) == pytest.approx(pred.score_cls1, abs=1e-6)
        stored_map = rows[key]["patch_probs"][:, 0].reshape(SIZE, SIZE)
        np.testing.assert_allclose(stored_map, pred.anomaly_map, atol=1e-6)


def test_eval_store_keys_tiles_but_not_an_untiled_roi(model, dataset, tmp_path):
    root, out = dataset["root"], tmp_path / "ev"
    base = {"model": str(model), "image_size": SIZE, "workers": 0}
    plain = Evaluator(EvalConfig(**base), out, progress=False)
    plain.evaluate(root)
    assert plain.network_images == 6
    with_roi = Evaluator(EvalConfig(**base, roi=str(dataset["roi"])), out, progress=False)
    result = with_roi.evaluate(root)
    assert with_roi.network_images == 0  # the ROI is applied to the stored outputs
    assert (
        result.classes["bottle"]["pixel_auroc"]
        != plain.evaluate(root).classes["bottle"]["pixel_auroc"]
    )
    keys = {
        Evaluator(EvalConfig(**base, **extra), out).store_for("mini").root.name
        for extra in ({}, {"roi": str(dataset["roi"])}, {"tile": 48}, {"tile": 48, "sigma": 2.0},
                      {"tile": 48, "roi": str(dataset["roi"])})
    }  # fmt: skip
    assert len(keys) == 4  # untiled with or without an ROI share one


def test_eval_roi_dir_needs_every_mask(model, dataset, tmp_path):
    rois = tmp_path / "rois"
    _save(rois / "bottle" / "test" / "good" / "000.png", np.full((96, 96), 255, np.uint8))
    evaluator = Evaluator(
        EvalConfig(model=str(model), image_size=SIZE, workers=0, roi_dir=str(rois)),
        tmp_path / "ev",
        progress=False,
    )
    with pytest.raises(RoiError, match="no ROI mask for it"):
        evaluator.evaluate(dataset["root"])
