"""Heat-map colouring, overlays, masks and raw maps (numpy only, no model)."""

from __future__ import annotations

import importlib
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from tipsomaly.report.overlay import (
    colorize,
    jet,
    normalize_map,
    overlay,
    resize_map,
    save_map,
    save_mask,
    save_overlay,
)


def test_jet_ramp_endpoints_and_middle():
    assert jet(np.array(0.0)).tolist() == [0, 0, 128]  # dark blue
    assert jet(np.array(0.5)).tolist() == [128, 255, 128]  # green
    assert jet(np.array(1.0)).tolist() == [128, 0, 0]  # dark red
    ramp = jet(np.linspace(0, 1, 101)).astype(int)
    assert ramp.shape == (101, 3) and ramp.dtype == np.int64
    # red rises and blue falls along the ramp (on the whole)
    assert ramp[75:, 0].mean() > ramp[:25, 0].mean() and ramp[:25, 2].mean() > ramp[75:, 2].mean()


def test_jet_clips_out_of_range():
    assert jet(np.array([-3.0, 7.0])).tolist() == [[0, 0, 128], [128, 0, 0]]


def test_normalize_fixed_clips_and_per_image_stretches():
    m = np.array([[0.2, 0.4], [0.6, 1.5]], np.float32)
    np.testing.assert_allclose(normalize_map(m, "fixed"), [[0.2, 0.4], [0.6, 1.0]])
    np.testing.assert_allclose(normalize_map(m, "per-image"), (m - 0.2) / 1.3, rtol=1e-6)
    assert normalize_map(np.full((3, 3), 0.7), "per-image").max() == 0.0  # constant map
    assert normalize_map(np.array([[np.nan, 0.5]]), "fixed").tolist() == [[0.0, 0.5]]
    with pytest.raises(ValueError, match="scale"):
        normalize_map(m, "log")
    with pytest.raises(ValueError, match="2-D"):
        normalize_map(np.zeros(4), "fixed")


def test_fixed_scale_is_comparable_across_images():
    low, high = np.full((4, 4), 0.1), np.full((4, 4), 0.9)
    assert colorize(low)[0, 0, 2] > colorize(low)[0, 0, 0]  # blue-ish
    assert colorize(high)[0, 0, 0] > colorize(high)[0, 0, 2]  # red-ish


def _defect_image(h=90, w=130, box=(20, 50, 70, 100)):
    """Grey noise image with a dark square defect at box = (y0, y1, x0, x1)."""
    rng = np.random.default_rng(0)
    img = rng.integers(100, 160, (h, w, 3)).astype(np.uint8)
    y0, y1, x0, x1 = box
    img[y0:y1, x0:x1] = 20
    return img, box


def _redness(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., 0].astype(float) - rgb[..., 2].astype(float)


def test_overlay_is_redder_where_the_map_peaks():
    img, (y0, y1, x0, x1) = _defect_image()
    amap = np.zeros(img.shape[:2], np.float32)
    amap[y0:y1, x0:x1] = 1.0
    out = overlay(img, amap)
    assert out.shape == img.shape and out.dtype == np.uint8
    inside = np.zeros(img.shape[:2], bool)
    inside[y0:y1, x0:x1] = True
    red = _redness(out)
    assert red[inside].mean() > red[~inside].mean() + 100


def test_overlay_blends_with_alpha():
    img = np.full((5, 6, 3), 200, np.uint8)
    amap = np.ones((5, 6), np.float32)
    assert (overlay(img, amap, alpha=0.0) == img).all()
    assert (overlay(img, amap, alpha=1.0) == np.array([128, 0, 0])).all()
    np.testing.assert_array_equal(overlay(img, amap, alpha=0.5)[0, 0], [164, 100, 100])
    with pytest.raises(ValueError, match="alpha"):
        overlay(img, amap, alpha=1.5)


def test_overlay_resizes_a_small_map_to_the_image_and_accepts_pil_and_grey():
    img, (y0, y1, x0, x1) = _defect_image(h=140, w=140, box=(70, 140, 70, 140))
    small = np.zeros((14, 14), np.float32)
    small[7:, 7:] = 1.0  # bottom-right quarter
    for image in (Image.fromarray(img).convert("RGBA"), img[..., 0]):
        out = overlay(image, small)
        assert out.shape == (140, 140, 3)
        red = _redness(out)
        assert red[y0 + 5 :, x0 + 5 :].mean() > red[: y0 - 5, : x0 - 5].mean() + 100
    np.testing.assert_array_equal(resize_map(small, (14, 14)), small)
    assert resize_map(small, (28, 42)).shape == (28, 42)


def test_save_overlay_mask_and_map(tmp_path):
    img, (y0, y1, x0, x1) = _defect_image()
    amap = np.zeros(img.shape[:2], np.float32)
    amap[y0:y1, x0:x1] = 0.8
    p = save_overlay(tmp_path / "a" / "b.png", img, amap)
    with Image.open(p) as im:
        assert im.mode == "RGB" and im.size == (img.shape[1], img.shape[0])
    m = save_mask(tmp_path / "m" / "b.png", amap, 0.5)
    with Image.open(m) as im:
        mask = np.asarray(im)
    assert im.mode == "L" and set(np.unique(mask)) == {0, 255}
    np.testing.assert_array_equal(mask == 255, amap >= 0.5)
    r = save_map(tmp_path / "r" / "b.npy", amap.astype(np.float64))
    raw = np.load(r, allow_pickle=False)
    assert raw.dtype == np.float32 and raw.shape == amap.shape
    np.testing.assert_array_equal(raw, amap)


# -- original-size overlays without full-size float copies -------------------------------------
def _whole_array_overlay(rgb: np.ndarray, amap: np.ndarray, alpha: float, scale: str):
    """The overlay rule written out on whole arrays (float64), independent of the module."""
    m = np.nan_to_num(amap.astype(np.float64), nan=0.0, posinf=1.0, neginf=0.0)
    if scale == "per-image":
        lo, hi = m.min(), m.max()
        m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    v = np.clip(m, 0.0, 1.0)[..., None]
    heat = np.round(np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0])), 0, 1) * 255)
    return np.clip(np.round((1 - alpha) * rgb + alpha * heat), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("scale", ["fixed", "per-image"])
def test_banded_overlay_equals_the_whole_array_rule(monkeypatch, scale):
    ov = importlib.import_module("tipsomaly.report.overlay")

    monkeypatch.setattr(ov, "CHUNK_PIXELS", 37 * 5)  # many bands, the last one short
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (61, 37, 3), dtype=np.uint8)
    amap = rng.normal(0.5, 0.4, (61, 37)).astype(np.float32)
    amap[3, 4], amap[50, 1], amap[60, 36] = np.nan, np.inf, -np.inf
    got = overlay(rgb, amap, alpha=0.3, scale=scale)
    want = _whole_array_overlay(rgb, amap, 0.3, scale)
    # float32 against float64 rounding: at most one level apart, almost everywhere equal
    diff = np.abs(got.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99
    assert np.array_equal(colorize(amap, scale), ov.jet(normalize_map(amap, scale)))


def test_overlay_peak_memory_is_a_few_bytes_per_pixel(monkeypatch):
    """A 2000×1200 overlay holds its uint8 output and one band, not float (H, W, 3) copies."""
    ov = importlib.import_module("tipsomaly.report.overlay")

    monkeypatch.setattr(ov, "CHUNK_PIXELS", 1 << 16)
    h, w = 1200, 2000
    rgb = np.full((h, w, 3), 100, np.uint8)
    amap = np.linspace(0, 1, h * w, dtype=np.float32).reshape(h, w)
    tracemalloc.start()
    try:
        out = overlay(rgb, amap, scale="per-image")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.shape == (h, w, 3)
    # output 3 B/px + one band's temporaries; the whole-array version needed over 40 B/px
    assert peak < 6 * h * w, f"peak {peak / 2**20:.1f} MB for {h * w / 1e6:.1f} MP"


def test_an_explicit_span_maps_its_ends_to_the_ramp_ends_and_its_middle_to_green():
    from tipsomaly.report.overlay import jet

    t = 0.07
    image = np.zeros((4, 6, 3), np.uint8)
    amap = np.array([[0.0, t, 2 * t, 0.5, -1.0, t / 2]] * 4, np.float32)
    out = overlay(image, amap, alpha=1.0, span=(0.0, 2 * t))
    expected = jet(np.clip(amap / (2 * t), 0, 1))
    np.testing.assert_array_equal(out, np.round(expected).astype(np.uint8))
    # without the span the same map is nearly all "low" on the fixed [0, 1] scale
    assert not np.array_equal(overlay(image, amap, alpha=1.0), out)
    with pytest.raises(ValueError, match="span"):
        overlay(image, amap, span=(0.1, 0.1))
