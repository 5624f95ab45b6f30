"""The exportable module in PyTorch: the same numbers as the Detector, at one fixed size."""

from __future__ import annotations

import pytest
import torch

from goldens import Golden, golden_dirs
from tipsomaly.deploy import graph as graph_module
from tipsomaly.deploy.graph import ExportModule, FixedSizeVision, GraphBank
from tipsomaly.method.detector import Detector
from tipsomaly.method.fitting import fit_profile
from tipsomaly.method.head import DetectorOutput
from tipsomaly.method.memory_bank import MemoryBank
from tipsomaly.method.profile import Profile
from tipsomaly.tips.model import load_model_dir

GOLDEN = Golden(golden_dirs()[0])
SIZE = GOLDEN.config["pipeline"]["image_size"]  # 70: the tiny tower interpolates its 4x4 grid
CLASS = "tile"


def _detector(**kw) -> Detector:
    return Detector(GOLDEN.model(), image_size=SIZE, text_cache=False, **kw)


def _images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def profile() -> Profile:
    refs = [torch.rand(3, 84, 84, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    return fit_profile(_detector(), refs, CLASS)


def test_fixed_size_vision_shares_the_weights_and_gives_the_same_features():
    vision = GOLDEN.model().vision
    grid = SIZE // vision.patch_size
    fixed = FixedSizeVision(vision, (grid, grid))
    assert dict(fixed.named_parameters()).keys() == dict(vision.named_parameters()).keys()
    assert all(a is b for a, b in zip(fixed.parameters(), vision.parameters(), strict=True))
    assert fixed.fixed_pos_embed.shape == (1, 1 + grid * grid, vision.config.embed_dim)
    images = _images(3)
    with torch.no_grad():
        for got, expected in zip(fixed(images), vision(images), strict=True):
            assert torch.equal(got, expected)
    with pytest.raises(ValueError, match=rf"{grid}×{grid} patch grid only, got 6×6"):
        fixed(torch.rand(1, 3, 6 * vision.patch_size, 6 * vision.patch_size))


def test_zero_shot_module_equals_the_detector_exactly():
    detector = _detector()
    module = ExportModule.from_detector(detector, CLASS)
    assert module.output_names == DetectorOutput._fields
    assert module.mode == "zero-shot"
    images = _images(3)
    with torch.no_grad():
        got = module(images)
        expected = detector.score(images, [CLASS] * 3)
    for a, b in zip(got, expected, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["fused", "few-shot", "zero-shot"])
def test_module_with_a_profile_equals_the_detector(profile, mode):
    detector = _detector(profile=profile, mode=mode)
    module = ExportModule.from_detector(detector, CLASS)
    assert module.mode == mode
    n = len(DetectorOutput._fields)
    assert module.output_names[n:] == ("pred_label", "pred_mask")
    assert float(module.image_threshold) == pytest.approx(profile.image_threshold(mode))
    images = _images(3, seed=5)
    with torch.no_grad():
        got = module(images)
        expected = detector.score(images, [CLASS] * 3)
    for a, b in zip(got[:n], expected, strict=True):
        # the bank search is one product per block here, blocked by query rows there
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert torch.equal(got[n], got[0] >= module.image_threshold)
    assert torch.equal(got[n + 1], got[3] >= module.pixel_threshold)


def test_graph_bank_equals_the_memory_bank_across_blocks(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(300, 16, generator=gen)
    queries = torch.randn(2, 50, 16, generator=gen)
    expected = MemoryBank(features)(queries)
    monkeypatch.setattr(graph_module, "BANK_BLOCK", 64)  # 5 blocks, the last one short
    got = GraphBank(MemoryBank(features).features, normalized=True)(queries)
    assert got.shape == (2, 50)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="no leave-one-out"):
        GraphBank(features)(queries, torch.zeros(2, 50, dtype=torch.long))


def test_module_refuses_what_cannot_be_exported():
    model = GOLDEN.model()
    text = torch.zeros(2, model.embed_dim)
    with pytest.raises(ValueError, match="multiple of 14, got 71"):
        ExportModule(model, text, image_size=71)
    with pytest.raises(ValueError, match="one class per export, got 2"):
        ExportModule(model, torch.zeros(2, 2, model.embed_dim), image_size=SIZE)
    with pytest.raises(ValueError, match="needs references"):
        ExportModule(model, text, image_size=SIZE, mode="fused")
    bf16 = load_model_dir(GOLDEN.dir, description="golden.json").set_compute_dtype(torch.bfloat16)
    with pytest.raises(ValueError, match="an export is fp32"):
        ExportModule(bf16, text, image_size=SIZE)


def test_building_the_module_leaves_the_detector_untouched():
    detector = _detector()
    before = {k: v.clone() for k, v in detector.model.state_dict().items()}
    vision = detector.model.vision
    ExportModule.from_detector(detector, CLASS)
    assert detector.model.vision is vision and type(vision).__name__ == "VisionTransformer"
    after = detector.model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
