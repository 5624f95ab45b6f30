"""The TipsOmaly pipeline against the published reference code, on every golden folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tipsomaly.method.detector import Detector
from tipsomaly.method.pixel_prompts import PixelPrompts
from tipsomaly.method.prompts import class_embeddings, learned_embeddings, load_prompts


def _detector(golden) -> Detector:
    pipeline = golden.config["pipeline"]
    return Detector(
        golden.model(),
        prompt_type=pipeline["prompt_type"],
        pixel_prompts=PixelPrompts(torch.from_numpy(golden["learnable_prompts"])),
        image_size=pipeline["image_size"],
        sigma=pipeline["sigma"],
    )


def _assert_close(got: torch.Tensor, expected: np.ndarray, tol: float) -> None:
    assert tuple(got.shape) == expected.shape
    assert float(np.abs(got.detach().float().numpy() - expected).max()) <= tol


def test_fixed_text_embeddings(golden):
    pipeline = golden.config["pipeline"]
    prompts = load_prompts(pipeline["prompt_type"])
    with torch.no_grad():
        got = torch.stack(
            [class_embeddings(golden.model(), prompts, c) for c in pipeline["class_names"]]
        )
    _assert_close(got, golden["fixed_text"], golden.tol["text_embedding_abs"])


def test_learned_text_embeddings(golden):
    pipeline = golden.config["pipeline"]
    prompts = load_prompts(pipeline["prompt_type"])
    preambles = torch.from_numpy(golden["learnable_prompts"])
    assert preambles.shape[1] == pipeline["n_prompt"]
    with torch.no_grad():
        got = learned_embeddings(
            golden.model(), prompts, preambles, pipeline.get("learnable_class_name", "object")
        )
    _assert_close(got[None], golden["learned_text"], golden.tol["text_embedding_abs"])


@pytest.fixture
def scores(golden):
    detector = _detector(golden)
    names = [golden.config["pipeline"]["class_names"][i] for i in golden["class_ids"]]
    return detector.score_batch(torch.from_numpy(golden["images"]), names)


def test_probabilities(golden, scores):
    tol = golden.tol["probabilities_abs"]
    _assert_close(scores.global_probs_cls1, golden["global_probs_cls1"], tol)
    _assert_close(scores.global_probs_cls2, golden["global_probs_cls2"], tol)
    _assert_close(scores.patch_probs, golden["patch_probs"], tol)


def test_image_scores(golden, scores):
    tol = golden.tol["probabilities_abs"]
    _assert_close(scores.score_cls1, golden["image_scores_cls1"], tol)
    _assert_close(scores.score_cls2, golden["image_scores_cls2"], tol)


def test_pixel_maps(golden, scores):
    _assert_close(scores.maps, golden["pixel_maps"], golden.tol["pixel_maps_abs"])


def test_predict_on_arrays_matches_batch_scores(golden, scores):
    """The user-facing predict() path (uint8 arrays in) gives the same maps as score_batch."""
    detector = _detector(golden)
    names = [golden.config["pipeline"]["class_names"][i] for i in golden["class_ids"]]
    images = golden["images"]
    # Images already at model size and exactly representable in 8 bit give identical tensors.
    uint8 = np.round(images * 255).astype(np.uint8)
    exact = torch.from_numpy(uint8.astype(np.float32) / 255)
    reference = detector.score_batch(exact, names)
    preds = detector.predict([a.transpose(1, 2, 0) for a in uint8], names, batch_size=3)
    assert len(preds) == len(names)
    for k, p in enumerate(preds):
        np.testing.assert_allclose(p.anomaly_map, reference.maps[k].numpy(), atol=1e-6)
        assert p.score_cls1 == pytest.approx(float(reference.score_cls1[k]), abs=1e-6)
        assert p.image_score == p.score_cls1
        assert p.anomaly_map_original.shape == images.shape[-2:]
