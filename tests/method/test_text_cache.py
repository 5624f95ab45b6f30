"""Text embeddings cached on disk per (model weights, dtype, prompts, class)."""

from __future__ import annotations

import json

import pytest
import torch

from synthetic import tiny_model_dir, tiny_vision
from tipsomaly.method.detector import Detector
from tipsomaly.method.pixel_prompts import PixelPrompts
from tipsomaly.method.text_cache import TextEmbeddingCache
from tipsomaly.tips.model import load_model


@pytest.fixture
def model_dir(tmp_path):
    return tiny_model_dir(tmp_path / "model")


def _detector(model_dir, cache, **kw):
    vision = tiny_vision()  # the model of tiny_model_dir: its width, a 4x4 patch grid
    generator = torch.Generator().manual_seed(0)
    prompts = PixelPrompts(torch.randn(2, 8, vision["embed_dim"], generator=generator))
    size = 4 * vision["patch_size"]
    return Detector(model_dir, image_size=size, text_cache=cache, pixel_prompts=prompts, **kw)


def test_second_run_reads_the_cache_without_the_text_tower(model_dir, tmp_path):
    cache = TextEmbeddingCache(tmp_path / "text")
    first = _detector(model_dir, cache)
    fixed, learned = first.class_text("metal_nut"), first.pixel_text()
    assert len(list((tmp_path / "text").rglob("*.safetensors"))) == 2

    second = _detector(model_dir, cache)

    def no_text_tower(*args, **kwargs):
        raise AssertionError("the text tower must not run on a cache hit")

    second.model.text.forward = no_text_tower
    assert torch.equal(second.class_text("metal_nut"), fixed)
    assert torch.equal(second.pixel_text(), learned)


def test_the_key_changes_with_what_the_embeddings_depend_on(model_dir, tmp_path):
    cache = TextEmbeddingCache(tmp_path / "text")
    base = _detector(model_dir, cache).class_text("screw")
    medical = _detector(model_dir, cache, prompt_type="medical").class_text("screw")
    assert not torch.equal(base, medical)
    # New weights (a rewritten file) must not be served stale embeddings.
    description = json.loads((model_dir / "model.json").read_text())
    (model_dir / "model.json").write_text(json.dumps(description))
    with torch.no_grad():
        tampered = load_model(model_dir)
        tampered.text.ln_final.bias.add_(0.5)
    tampered.fingerprint = "other-weights"
    other = _detector(tampered, cache).class_text("screw")
    assert not torch.equal(other, base)
    assert len(list((tmp_path / "text").rglob("*.safetensors"))) == 3


def test_cache_can_be_disabled(model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path / "home"))
    detector = _detector(model_dir, False)
    detector.class_text("screw")
    assert not (tmp_path / "home").exists()


def test_unreadable_entry_is_recomputed(model_dir, tmp_path):
    cache = TextEmbeddingCache(tmp_path / "text")
    expected = _detector(model_dir, cache).class_text("screw")
    for f in (tmp_path / "text").rglob("*.safetensors"):
        f.write_bytes(b"garbage")
    assert torch.equal(_detector(model_dir, cache).class_text("screw"), expected)
