"""image_metrics / pixel_metrics: keys, input forms, validation, degenerate inputs and memory."""

from __future__ import annotations

import logging
import math
import tracemalloc

import numpy as np
import pytest
import torch
from reference_impl import aupro_mvtec_direct, random_case

from tipsomaly.metrics import _arrays, aupro_zsad, image_metrics, pixel_metrics

PIXEL_KEYS = {"pixel_auroc", "pixel_ap", "pixel_aupro", "pixel_f1-max"}


@pytest.fixture
def case():
    return random_case(np.random.default_rng(0), n=3, size=16, levels=20)


def test_keys_and_aupro_choice(case):
    maps, masks = case
    zsad = pixel_metrics(maps, masks)
    mvtec = pixel_metrics(maps, masks, aupro="mvtec")
    assert set(zsad) == set(mvtec) == PIXEL_KEYS
    assert zsad["pixel_aupro"] == aupro_zsad(maps, masks)
    assert mvtec["pixel_aupro"] == pytest.approx(aupro_mvtec_direct(maps, masks), abs=1e-12)
    assert {k: v for k, v in zsad.items() if k != "pixel_aupro"} == {
        k: v for k, v in mvtec.items() if k != "pixel_aupro"
    }
    scores, labels = maps.max(axis=(1, 2)), masks.max(axis=(1, 2)).astype(bool)
    labels[0] = False
    assert set(image_metrics(scores, labels)) == {"image_auroc", "image_ap", "image_f1-max"}
    with pytest.raises(ValueError, match="aupro must be one of"):
        pixel_metrics(maps, masks, aupro="official")


def test_torch_and_shape_variants(case):
    maps, masks = case
    ref = pixel_metrics(maps, masks)
    assert pixel_metrics(torch.from_numpy(maps), torch.from_numpy(masks) > 0.5) == ref
    assert pixel_metrics(maps[:, None], masks[:, None].astype(np.uint8)) == ref
    assert pixel_metrics(torch.from_numpy(maps).bfloat16(), torch.from_numpy(masks))[
        "pixel_auroc"
    ] == pytest.approx(ref["pixel_auroc"], abs=0.05)
    one = pixel_metrics(maps[0], masks[0])
    assert set(one) == PIXEL_KEYS


def test_chunking_does_not_change_results(case, monkeypatch):
    maps, masks = case
    ref = {kind: pixel_metrics(maps, masks, aupro=kind) for kind in ("zsad", "mvtec")}
    monkeypatch.setattr(_arrays, "CHUNK_ELEMENTS", 100)  # one image per chunk, many pos chunks
    for kind in ("zsad", "mvtec"):
        assert pixel_metrics(maps, masks, aupro=kind) == pytest.approx(ref[kind], abs=1e-13)


@pytest.mark.parametrize(
    ("maps", "masks", "message"),
    [
        (np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), "same shape"),
        (np.zeros((2, 3, 4, 4)), np.zeros((2, 3, 4, 4)), r"\(N, H, W\)"),
        (np.zeros(5), np.zeros(5), r"\(N, H, W\)"),
        (np.zeros((1, 4, 4)), np.full((1, 4, 4), 255, dtype=np.uint8), "binary"),
        (np.zeros((1, 4, 4)), np.full((1, 4, 4), 0.5), "binary"),
        (np.full((1, 2, 2), np.nan), np.eye(2)[None], "NaN or infinite"),
        (np.zeros((0, 4, 4)), np.zeros((0, 4, 4)), "empty"),
    ],
)
def test_pixel_validation(maps, masks, message):
    with pytest.raises(ValueError, match=message):
        pixel_metrics(maps, masks)


def test_image_validation():
    with pytest.raises(ValueError, match="same shape"):
        image_metrics(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="1-D"):
        image_metrics(np.zeros((3, 2)), np.zeros((3, 2)))
    with pytest.raises(TypeError, match="real numbers"):
        image_metrics(np.zeros(3, dtype=bool), np.zeros(3))
    with pytest.raises(ValueError, match="binary"):
        image_metrics(np.zeros(3), np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="NaN"):
        image_metrics(np.array([0.1, np.inf]), np.array([0, 1]))


def _all_nan(values):
    return all(math.isnan(v) for v in values.values())


def test_degenerate_inputs_give_nan_and_warn(caplog):
    rng = np.random.default_rng(0)
    maps = rng.random((2, 8, 8)).astype(np.float32)
    with caplog.at_level(logging.WARNING, logger="tipsomaly.metrics"):
        for kind in ("zsad", "mvtec"):
            assert _all_nan(pixel_metrics(maps, np.zeros_like(maps), aupro=kind))  # all normal
            all_bad = pixel_metrics(maps, np.ones_like(maps), aupro=kind)  # all anomalous
            assert _all_nan(all_bad)
        assert _all_nan(image_metrics(rng.random(5), np.zeros(5)))
        assert _all_nan(image_metrics(rng.random(5), np.ones(5)))
    assert "no anomalous" in caplog.text and "no normal" in caplog.text
    assert "no anomalous region" in caplog.text

    caplog.clear()
    masks = np.zeros((2, 8, 8))
    masks[0, :2, :2] = 1
    with caplog.at_level(logging.WARNING, logger="tipsomaly.metrics"):
        constant = pixel_metrics(np.ones((2, 8, 8)), masks)
    assert constant["pixel_auroc"] == 0.5  # all tied
    assert math.isnan(constant["pixel_aupro"]) and "all scores are equal" in caplog.text


def test_extra_memory_is_about_one_copy(monkeypatch):
    """Peak numpy allocation: one copy of the maps plus < 48 bytes per anomalous pixel (untimed)."""
    monkeypatch.setattr(_arrays, "CHUNK_ELEMENTS", 1 << 14)  # one image per chunk
    rng = np.random.default_rng(0)
    maps, masks = random_case(rng, n=128, size=128, levels=None)
    masks = masks.astype(bool)
    n_pos = int(masks.sum())
    for kind in ("zsad", "mvtec"):
        tracemalloc.start()
        pixel_metrics(maps, masks, aupro=kind)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 1.1 * maps.nbytes + 48 * n_pos, (kind, peak / maps.nbytes, n_pos / masks.size)
