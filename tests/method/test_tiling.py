"""Tiled inference: the grid, the blending window, seams, and a small defect on a large image."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthetic import tiny_model_dir, tiny_vision
from tipsomaly.errors import InvalidOptionError
from tipsomaly.method.config import DetectorConfig
from tipsomaly.method.detector import Detector
from tipsomaly.method.fitting import fit_profile
from tipsomaly.method.tiling import (
    MAX_AUTO_TILES,
    WINDOW_FLOOR,
    MapMerger,
    auto_tile_size,
    axis_starts,
    crop_tiles,
    merge_maps,
    plan_tiles,
    resize_map,
    tile_window,
)
from tipsomaly.validation import tile_side

PATCH = tiny_vision()["patch_size"]
SIZE = 5 * PATCH  # the tiny model's input: a 5x5 patch grid


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory.mktemp("model"))


def _detector(model: Path, **kwargs) -> Detector:
    return Detector(model, image_size=SIZE, text_cache=False, **kwargs)


# -- the grid -----------------------------------------------------------------------------------
@pytest.mark.parametrize("length", [1, 13, 70, 71, 139, 140, 141, 300, 1000, 4000])
@pytest.mark.parametrize("tile", [1, 14, 70, 140, 518])
@pytest.mark.parametrize("overlap", [0.0, 0.25, 0.5, 0.9])
def test_axis_starts_cover_the_axis_evenly_with_the_overlap_asked(length, tile, overlap):
    starts = axis_starts(length, tile, overlap)
    side = min(tile, length)
    assert starts[0] == 0 and starts[-1] + side == length  # first at 0, last flush
    assert starts == sorted(set(starts))
    gaps = np.diff(starts)
    stride = max(1, int(np.floor(side * (1 - overlap))))
    if gaps.size:
        assert gaps.max() <= stride  # neighbours share at least overlap * side pixels
        assert gaps.max() - gaps.min() <= 1  # evenly spread
    if len(starts) >= 3:  # the fewest tiles: one fewer would need a larger step
        assert (length - side) / (len(starts) - 2) > stride


def test_an_image_no_larger_than_the_tile_is_one_tile_the_whole_image():
    grid = plan_tiles((50, 80), 140)
    assert len(grid) == 1 and grid.boxes[0] == (0, 0, 50, 80)
    grid = plan_tiles((300, 100), 140)  # tiles are min(tile, side) on each axis
    assert {(b.height, b.width) for b in grid.boxes} == {(140, 100)}
    assert grid.shape == (3, 1)


def test_plan_tiles_row_major_and_covering():
    grid = plan_tiles((300, 420), 140, 0.25)
    covered = np.zeros((300, 420), int)
    for b in grid.boxes:
        covered[b.y0 : b.y1, b.x0 : b.x1] += 1
    assert covered.min() >= 1
    assert grid.shape == (3, 4) and len(grid) == 12
    assert [b.y0 for b in grid.boxes] == sorted(b.y0 for b in grid.boxes)


def test_auto_tile_size_keeps_native_resolution_until_64_tiles():
    assert auto_tile_size((3000, 4000), 518) == 648
    assert len(plan_tiles((3000, 4000), 648)) <= MAX_AUTO_TILES
    assert len(plan_tiles((3000, 4000), 518)) > MAX_AUTO_TILES
    assert auto_tile_size((1024, 1024), 518) == 518  # 9 tiles at native resolution
    assert len(plan_tiles((400, 300), auto_tile_size((400, 300), 518))) == 1


@pytest.mark.parametrize(
    ("tile", "overlap", "match"),
    [(0, 0.25, "integer >= 1"), ("big", 0.25, "or 'auto'"), (True, 0.25, "integer"),
     (64, -0.1, r"\[0, 0.9\]"), (64, 0.95, r"\[0, 0.9\]")],
)  # fmt: skip
def test_bad_tile_settings_are_refused_before_the_model_loads(tile, overlap, match):
    with pytest.raises(InvalidOptionError, match=match):
        DetectorConfig(tile=tile, tile_overlap=overlap)
    with pytest.raises(InvalidOptionError, match=match):
        Detector("/nonexistent/model", tile=tile, tile_overlap=overlap)


def test_tile_settings_accept_auto_none_and_digits():
    assert tile_side(None) is None and tile_side("auto") == "auto"
    assert tile_side("140") == 140 and tile_side(np.int64(70)) == 70
    tile = DetectorConfig(tile=np.int64(70)).tile
    assert tile == 70 and type(tile) is int


def test_a_tile_smaller_than_a_patch_is_refused(model):
    """A tile holds at least one patch of the image: smaller, it is refused (InvalidOptionError
    naming the tile and the patch size); one patch is accepted."""
    with pytest.raises(InvalidOptionError) as info:
        _detector(model, tile=PATCH - 1)
    assert str(info.value) == (
        f"tile must be at least {PATCH} (the patch size) pixels or 'auto', got {PATCH - 1}"
    )
    assert _detector(model, tile=PATCH).config.tile == PATCH


# -- blending -----------------------------------------------------------------------------------
def test_window_falls_to_the_floor_at_the_edges_and_is_symmetric():
    w = tile_window(40, 30).numpy()
    assert w.shape == (40, 30)
    assert np.allclose(w, w[::-1]) and np.allclose(w, w[:, ::-1])
    assert w.max() <= 1.0 and w.max() > 0.99
    assert w.min() >= WINDOW_FLOOR**2 and w[0, 0] < 2e-3


def test_merging_consistent_tiles_gives_the_values_back_exactly():
    """Tiles cut from one map (at their own size) blend back into that map, wherever they
    overlap: the window only weighs agreeing values."""
    rng = np.random.default_rng(0)
    full = torch.from_numpy(rng.random((130, 170)).astype(np.float32))
    grid = plan_tiles((130, 170), 60, 0.3)
    maps = torch.stack([full[b.y0 : b.y1, b.x0 : b.x1] for b in grid.boxes])
    merged = merge_maps(maps, grid.boxes, (130, 170))
    torch.testing.assert_close(merged, full, rtol=0, atol=1e-6)


def test_merger_leaves_uncovered_pixels_at_zero_and_is_used_once():
    merger = MapMerger((20, 30))
    merger.add(torch.ones(1, 7, 7), [plan_tiles((20, 30), 10).boxes[0]])
    out = merger.result()
    assert out[:10, :10].min() == 1.0 and out[10:, :].max() == 0 and out[:, 10:].max() == 0
    with pytest.raises(RuntimeError, match="called already"):
        merger.result()
    with pytest.raises(RuntimeError, match="after result"):
        merger.add(torch.ones(1, 7, 7), [plan_tiles((20, 30), 10).boxes[0]])


def test_crop_tiles_are_the_preprocessed_crops():
    from tipsomaly.data.images import preprocess

    rng = np.random.default_rng(1)
    image = Image.fromarray((rng.random((90, 120, 3)) * 255).astype(np.uint8))
    grid = plan_tiles((90, 120), 50)
    x = crop_tiles(image, grid.boxes, SIZE)
    assert x.shape == (len(grid), 3, SIZE, SIZE)
    b = grid.boxes[-1]
    torch.testing.assert_close(x[-1], preprocess(image.crop((b.x0, b.y0, b.x1, b.y1)), SIZE))


def test_resize_map_is_identity_at_the_same_size():
    m = torch.rand(5, 7)
    assert resize_map(m, (5, 7)) is m or torch.equal(resize_map(m, (5, 7)), m)
    assert resize_map(torch.rand(2, 5, 7), (10, 14)).shape == (2, 10, 14)


# -- the detector, tiled ------------------------------------------------------------------------
def _texture(rng: np.random.Generator, h: int, w: int, noise: float = 40.0) -> np.ndarray:
    img = 128 + noise * rng.standard_normal((h, w, 1))
    return np.repeat(img, 3, axis=2).clip(0, 255).astype(np.uint8)


def test_one_tile_over_the_whole_image_is_the_untiled_map(model):
    rng = np.random.default_rng(2)
    image = _texture(rng, 60, 90)
    plain = _detector(model).predict(image, "tile")[0]
    tiled = _detector(model, tile=1000).predict(image, "tile")[0]
    assert tiled.tiles == 1 and plain.tiles is None
    np.testing.assert_allclose(tiled.anomaly_map_original, plain.anomaly_map_original, atol=1e-5)
    ev = tiled.evidence
    # the tiled score: the tile's CLS evidence + the map's maximum (not the patch maximum)
    assert ev["global_cls1"] == pytest.approx(plain.evidence["global_cls1"], abs=1e-6)
    assert tiled.score_cls1 == pytest.approx(ev["global_cls1"] + ev["local"], abs=1e-6)
    assert ev["local"] == pytest.approx(float(tiled.anomaly_map_original.max()), abs=1e-6)
    assert 0.0 <= tiled.image_score <= 2.0


def test_tiled_maps_are_seamless_on_a_uniform_texture(model):
    """The largest step between neighbouring pixels across a tile edge is no larger than the
    largest step inside the tiles (measured: 0.00031 across vs 0.00073 inside, where flat
    averaging of the same tiles gives 0.0075 across, 15x its inside steps)."""
    rng = np.random.default_rng(3)
    h, w = 600, 800
    det = _detector(model, tile=140, batch_size=64)
    m = det.predict(_texture(rng, h, w), "tile")[0].anomaly_map_original
    grid = det.tile_grid((h, w))
    dx, dy = np.abs(np.diff(m, axis=1)), np.abs(np.diff(m, axis=0))
    xs = {b.x0 - 1 for b in grid.boxes if b.x0 > 0} | {b.x1 - 1 for b in grid.boxes if b.x1 < w}
    ys = {b.y0 - 1 for b in grid.boxes if b.y0 > 0} | {b.y1 - 1 for b in grid.boxes if b.y1 < h}
    at_x = np.isin(np.arange(w - 1), sorted(xs))
    at_y = np.isin(np.arange(h - 1), sorted(ys))
    across = max(dx[:, at_x].max(), dy[at_y].max())
    inside = max(dx[:, ~at_x].max(), dy[~at_y].max())
    assert across <= inside, (across, inside)
    # the same tiles averaged with flat weights show their edges
    x = crop_tiles(Image.fromarray(_texture(np.random.default_rng(3), h, w)), grid.boxes, SIZE)
    maps = det.score_batch(x, "tile").maps
    flat_sum, flat_n = torch.zeros(h, w), torch.zeros(h, w)
    for tile_map, b in zip(maps, grid.boxes, strict=True):
        flat_sum[b.y0 : b.y1, b.x0 : b.x1] += resize_map(tile_map, (b.height, b.width))
        flat_n[b.y0 : b.y1, b.x0 : b.x1] += 1
    flat = (flat_sum / flat_n).numpy()
    flat_across = max(
        np.abs(np.diff(flat, axis=1))[:, at_x].max(), np.abs(np.diff(flat, axis=0))[at_y].max()
    )
    assert flat_across > 5 * across


def test_tiling_keeps_no_state_between_concurrent_calls(model):
    """One detector, several threads, images of different sizes: each answer equals the
    answer computed alone (nothing of one call is kept on the detector for the next)."""
    det = _detector(model, tile=60, batch_size=4)
    rng = np.random.default_rng(4)
    images = [_texture(rng, h, w) for h, w in ((90, 130), (140, 75), (61, 61), (100, 200))]
    alone = [det.predict(im, "tile")[0] for im in images]
    results: dict[int, object] = {}

    def work(i: int) -> None:
        results[i] = det.predict(images[i % 4], "tile")[0]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, pred in results.items():
        ref = alone[i % 4]
        assert pred.anomaly_map_original.shape == ref.anomaly_map_original.shape
        np.testing.assert_allclose(pred.anomaly_map_original, ref.anomaly_map_original, atol=1e-6)
        assert pred.image_score == pytest.approx(ref.image_score, abs=1e-6)


def _periodic(rng: np.random.Generator, h: int, w: int, oy: int = 0, ox: int = 0) -> np.ndarray:
    yy, xx = np.mgrid[oy : oy + h, ox : ox + w].astype(np.float32)
    base = 128 + 50 * np.sin(2 * np.pi * xx / 23) * np.cos(2 * np.pi * yy / 17)
    img = base[..., None] + rng.normal(0, 4, (h, w, 1))
    return np.clip(np.concatenate([img, img * 0.95, img * 0.85], -1), 0, 255).astype(np.uint8)


def test_a_12px_defect_on_a_4000x3000_image_stands_out_only_with_tiles(model):
    """The tiny random model cannot judge textures by prompts, so the evidence is few-shot:
    a profile fitted (with the same tiling) on two defect-free images of the texture, scored
    in few-shot mode. Untiled, the 12-px defect is 0.2 px of the 70-px input: its map does not
    stand out (measured: peak 0.0053 at the defect, 0.0054 elsewhere). With 70-px tiles it is
    a patch of its own (measured: 0.046 at the defect, at most 0.0038 anywhere else, 12x)."""
    rng = np.random.default_rng(0)
    references = [_periodic(rng, 400, 400, 7 * i, 11 * i) for i in range(2)]
    big = _periodic(rng, 3000, 4000)
    y, x = 1500, 2100
    big[y : y + 12, x : x + 12] = (20, 20, 20)
    ratios = {}
    for tile in (SIZE, None):  # tiles of the model input side: native resolution
        det = _detector(model, tile=tile, batch_size=64)
        profile = fit_profile(det, references, "tile", calibrate=False, max_bank=2048)
        det.set_profiles([profile], "few-shot")
        m = det.predict(big, "tile")[0].anomaly_map_original
        assert m.shape == (3000, 4000)
        at_defect = m[y - 20 : y + 32, x - 20 : x + 32].max()
        rest = m.copy()
        rest[y - 100 : y + 112, x - 100 : x + 112] = -1
        ratios[tile] = at_defect / rest.max()
        if tile is not None:
            peak = np.unravel_index(m.argmax(), m.shape)
            assert abs(peak[0] - (y + 6)) <= 20 and abs(peak[1] - (x + 6)) <= 20
    assert ratios[SIZE] > 5, ratios
    assert ratios[None] < 1.05, ratios
