"""Finite or refused: NaN/inf pixel prompts, text-cache entries and scores never pass as results."""

from __future__ import annotations

import csv
import json
import logging

import numpy as np
import pytest
import torch
from PIL import Image

from synthetic import tiny_model_dir
from tipsomaly.method import detector as detector_module
from tipsomaly.method.detector import Detector
from tipsomaly.method.pixel_prompts import PixelPromptError, PixelPrompts, load_pixel_prompts
from tipsomaly.method.text_cache import TextEmbeddingCache
from tipsomaly.runners.predict import run_predict

WIDTH = 64  # prompt files that meet no model: any width


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory.mktemp("finite") / "model")


def _vision(model_dir) -> dict:
    return json.loads((model_dir / "model.json").read_text())["vision"]


def _size(model_dir) -> int:
    """A model input size of 4 patches a side (no need for the case's own size)."""
    return 4 * _vision(model_dir)["patch_size"]


def _prompts(model_dir) -> PixelPrompts:
    """Finite pixel prompts of the tiny model's width."""
    width = _vision(model_dir)["embed_dim"]
    return PixelPrompts(torch.randn(2, 8, width, generator=torch.Generator().manual_seed(0)))


# -- pixel prompts ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_prompt_files_are_refused(tmp_path, bad):
    preambles = torch.randn(2, 8, WIDTH)
    preambles[1, 3, 5] = bad
    # a .safetensors file (what `tipsomaly train` writes; written here without our checks)
    from safetensors.torch import save_file

    st_path = tmp_path / "nan.safetensors"
    save_file({"preambles": preambles}, str(st_path))
    # the authors' .pth format
    pth_path = tmp_path / "nan.pth"
    torch.save(torch.nn.ParameterList([preambles[0], preambles[1]]), pth_path)
    for path in (st_path, pth_path):
        with pytest.raises(PixelPromptError, match="NaN or infinite") as info:
            load_pixel_prompts(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_prompts_of_the_wrong_dtype_or_shape_are_refused(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "int.safetensors"
    save_file({"preambles": torch.ones(2, 8, WIDTH, dtype=torch.int32)}, str(path))
    with pytest.raises(PixelPromptError, match="floating point"):
        load_pixel_prompts(path)
    path = tmp_path / "empty.safetensors"
    save_file({"preambles": torch.ones(2, 0, WIDTH)}, str(path))
    with pytest.raises(PixelPromptError, match="shape"):
        load_pixel_prompts(path)
    pth = tmp_path / "ragged.pth"
    torch.save(torch.nn.ParameterList([torch.ones(8, WIDTH), torch.ones(7, WIDTH)]), pth)
    with pytest.raises(PixelPromptError, match="differ in shape"):
        load_pixel_prompts(pth)


def test_in_memory_prompts_must_be_finite():
    preambles = torch.zeros(2, 8, WIDTH)
    preambles[0, 0, 0] = float("nan")
    with pytest.raises(PixelPromptError, match="NaN or infinite"):
        PixelPrompts(preambles)


# -- text-embedding cache -----------------------------------------------------------------------


def _entries(cache_dir):
    return sorted(cache_dir.rglob("*.safetensors"))


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda t: t.fill_(float("nan")),
        lambda t: t.index_fill_(1, torch.tensor([3]), float("inf")),
        lambda t: t[:, :10].contiguous(),  # another shape (another width)
        lambda t: t.double(),  # another dtype
    ],
    ids=["nan", "inf", "shape", "dtype"],
)
def test_bad_cache_entries_are_dropped_and_recomputed(model_dir, tmp_path, caplog, corrupt):
    from safetensors.torch import load_file, save_file

    cache = TextEmbeddingCache(tmp_path / "text")
    first = Detector(
        model_dir, image_size=_size(model_dir), text_cache=cache, pixel_prompts=_prompts(model_dir)
    )
    fixed, learned = first.class_text("screw"), first.pixel_text()
    entries = _entries(tmp_path / "text")
    assert len(entries) == 2
    for path in entries:
        bad = corrupt(load_file(str(path))["embeddings"].clone())
        save_file({"embeddings": bad}, str(path))

    second = Detector(
        model_dir, image_size=_size(model_dir), text_cache=cache, pixel_prompts=_prompts(model_dir)
    )
    with caplog.at_level(logging.WARNING, logger="tipsomaly.method.text_cache"):
        assert torch.equal(second.class_text("screw"), fixed)
        assert torch.equal(second.pixel_text(), learned)
    assert sum("discarding cached text embeddings" in r.message for r in caplog.records) == 2
    for path in _entries(tmp_path / "text"):  # rewritten with the recomputed values
        stored = load_file(str(path))["embeddings"]
        assert stored.dtype == torch.float32 and bool(torch.isfinite(stored).all())


def test_non_finite_embeddings_are_not_cached(tmp_path):
    cache = TextEmbeddingCache(tmp_path / "text")
    key = cache.key(what="test")
    cache.put(key, torch.full((2, 4), float("nan")))
    assert cache.get(key) is None and not _entries(tmp_path / "text")


# -- scores -------------------------------------------------------------------------------------


def _poison_image(detector: Detector, index: int) -> None:
    """Make the backbone's features of batch row ``index`` NaN (as an fp16 overflow would)."""
    encode = detector.model.encode_image

    def encode_with_nan(images):
        features = encode(images)
        if features.patches.shape[0] > index:
            features.patches[index] = float("nan")
        return features

    detector.model.encode_image = encode_with_nan


def test_a_non_finite_score_makes_that_image_an_error(model_dir, tmp_path):
    detector = Detector(
        model_dir, image_size=_size(model_dir), text_cache=False, pixel_prompts=_prompts(model_dir)
    )
    _poison_image(detector, 1)
    images = [np.full((40, 50, 3), v, np.uint8) for v in (60, 120, 180)]
    predictions = detector.predict(images, "screw", on_error="record")
    assert [p.ok for p in predictions] == [True, False, True]
    bad = predictions[1]
    assert bad.error == detector_module.NON_FINITE
    assert bad.anomaly_map is None and bad.anomaly_map_original is None
    assert np.isnan(bad.image_score)
    for good in (predictions[0], predictions[2]):
        assert np.isfinite(good.image_score) and np.isfinite(good.anomaly_map_original).all()


def test_predict_writes_an_error_row_for_a_non_finite_score(model_dir, tmp_path):
    detector = Detector(
        model_dir, image_size=_size(model_dir), text_cache=False, pixel_prompts=_prompts(model_dir)
    )
    _poison_image(detector, 0)
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.full((30, 30, 3), 90, np.uint8)).save(folder / "a.png")
    summary = run_predict(detector, [folder], class_name="screw", out_dir=tmp_path / "out")
    assert (summary.ok, summary.failed) == (0, 1)
    with summary.csv_path.open(newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "error" and "non-finite" in row["error"]
    assert row["image_score"] in ("", "nan")
