"""The backbone port against the published TIPS code, on every golden folder."""

from __future__ import annotations

import numpy as np
import sentencepiece
import torch

from tipsomaly.tips.model import TipsModel


def _max_abs(a: torch.Tensor, b: np.ndarray) -> float:
    return float(np.abs(a.detach().float().numpy() - b).max())


def test_vision_at_case_image_size(golden):
    model: TipsModel = golden.model()
    images = torch.from_numpy(golden["images"])
    assert images.shape[-1] != golden.config["vision"]["pos_embed_image_size"]  # interpolated
    with torch.no_grad():
        cls1, cls2, patches = model.encode_image(images)
    tol = golden.tol["features_abs"]
    assert _max_abs(cls1, golden["cls1"]) <= tol
    assert _max_abs(cls2, golden["cls2"]) <= tol
    assert _max_abs(patches, golden["patches"]) <= tol


def test_vision_at_base_size(golden):
    model = golden.model()
    base = golden.config["vision"]["pos_embed_image_size"]
    images = torch.from_numpy(golden["images"][:2, :, :base, :base])
    with torch.no_grad():
        cls1, cls2, patches = model.encode_image(images)
    tol = golden.tol["features_abs"]
    assert _max_abs(cls1, golden["base_cls1"]) <= tol
    assert _max_abs(cls2, golden["base_cls2"]) <= tol
    assert _max_abs(patches, golden["base_patches"]) <= tol


def _golden_texts(golden) -> list[str]:
    """The texts behind ``text_ids``, recovered with SentencePiece itself."""
    sp = sentencepiece.SentencePieceProcessor(
        model_file=str(golden.dir / golden.config["text"].get("tokenizer", "tokenizer.model"))
    )
    texts = []
    for ids, pads in zip(golden["text_ids"], golden["text_paddings"], strict=True):
        texts.append(sp.decode([int(i) for i, p in zip(ids, pads, strict=True) if not p]))
    return texts


def test_tokenizer_ids_and_paddings(golden):
    model = golden.model()
    texts = _golden_texts(golden)
    for variant in (texts, [t.upper() for t in texts]):  # the tokenizer lowercases
        ids, paddings = model.tokenizer(variant)
        np.testing.assert_array_equal(ids, golden["text_ids"])
        np.testing.assert_array_equal(paddings, golden["text_paddings"])


def test_text_embeddings(golden):
    model = golden.model()
    with torch.no_grad():
        from_ids = model.text(
            torch.from_numpy(golden["text_ids"]).long(), torch.from_numpy(golden["text_paddings"])
        )
        from_texts = model.encode_text(_golden_texts(golden))
    tol = golden.tol["text_embedding_abs"]
    assert _max_abs(from_ids, golden["text_emb"]) <= tol
    assert _max_abs(from_texts, golden["text_emb"]) <= tol


def test_temperature(golden):
    key = golden.config["text"].get("temperature_key", "temperature")
    with np.load(golden.dir / golden.config["text"]["npz"], allow_pickle=False) as text:
        stored = float(text[key])
    assert golden.model().temperature == stored
    assert golden.model().temperature > 0
