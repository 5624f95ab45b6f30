"""Behaviour of the towers and tokenizer beyond what the goldens pin."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from goldens import golden_dirs
from tipsomaly.tips.config import ConfigError, VisionConfig
from tipsomaly.tips.model import load_model_dir
from tipsomaly.tips.presets import PRESETS, get_preset
from tipsomaly.tips.text import sinusoidal_positions
from tipsomaly.tips.vision import VisionTransformer


@pytest.fixture(scope="module")
def model():
    return load_model_dir(golden_dirs()[0], description="golden.json")


def test_tokenizer_truncates_and_pads(model):
    ids, paddings = model.tokenizer(["word " * 200, "a"])
    assert ids.shape == paddings.shape == (2, model.text.config.max_len)
    assert paddings[0].sum() == 0
    assert paddings[1].sum() == model.text.config.max_len - len(model.tokenizer.encode("a"))
    assert (ids[paddings == 1] == 0).all()


@pytest.mark.parametrize("text", ["", "   "])
def test_empty_text_is_rejected(model, text):
    with pytest.raises(ValueError, match="empty"):
        model.encode_text(["a hazelnut", text])


def test_all_padding_is_rejected_in_the_tower(model):
    ids = torch.zeros(1, 64, dtype=torch.long)
    with pytest.raises(ValueError, match="all padding"):
        model.text(ids, torch.ones(1, 64, dtype=torch.long))


def test_prefix_is_prepended_valid_and_cut_back(model):
    texts = ["a photo of a damaged object.", "word " * 80]
    ids, paddings = (torch.from_numpy(a) for a in model.tokenizer(texts))
    d = model.embed_dim
    prefix = torch.randn(8, d)
    with torch.no_grad():
        got = model.text(ids, paddings, prefix=prefix)
        # The same computation written out: prefix, scaled tokens, cut to 64, all prefix valid.
        tokens = model.text.embed_tokens(ids)
        x = torch.cat([prefix.expand(2, -1, -1), tokens], 1)[:, :64]
        pads = torch.cat([torch.zeros(2, 8, dtype=torch.long), paddings], 1)[:, :64]
        x = x + sinusoidal_positions(64, d)
        valid = pads == 0
        mask = valid[..., None].float()
        for block in model.text.transformer.resblocks:
            x = block(x, valid, mask)
        x = model.text.ln_final(x)
        expected = (x * mask).sum(1) / (mask.sum(1) + 1e-8)
    torch.testing.assert_close(got, expected)
    # A per-row prefix (B, n, D) gives the same as a shared one.
    with torch.no_grad():
        again = model.text(ids, paddings, prefix=prefix.expand(2, -1, -1))
    torch.testing.assert_close(got, again)


def test_prefix_receives_gradients(model):
    prefix = torch.zeros(4, model.embed_dim, requires_grad=True)
    ids, paddings = model.tokenize(["a photo of a flawless object."])
    model.text(ids, paddings, prefix=prefix).sum().backward()
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0


def test_sinusoidal_positions_layout():
    pe = sinusoidal_positions(5, 8)
    n = 4
    inv = np.exp(-np.arange(n) * np.log(1e4) / (n - 1))
    expected = np.concatenate(
        [np.sin(np.arange(5)[:, None] * inv), np.cos(np.arange(5)[:, None] * inv)], 1
    )
    np.testing.assert_allclose(pe.numpy(), expected, atol=1e-6)


def test_vision_rejects_bad_sizes(model):
    with pytest.raises(ValueError, match="multiples of"):
        model.encode_image(torch.rand(1, 3, 30, 28))
    with pytest.raises(ValueError, match="B, 3, H, W"):
        model.encode_image(torch.rand(3, 28, 28))


def test_positional_embedding_cache(model):
    vision: VisionTransformer = model.vision
    a = vision.interpolate_pos_embed(5, 7)
    assert vision.interpolate_pos_embed(5, 7) is a  # cached
    assert a.shape == (1, 1 + 35, model.embed_dim)
    with torch.no_grad():
        vision.pos_embed.add_(1.0)  # weights changed: the cache must not serve stale values
    try:
        b = vision.interpolate_pos_embed(5, 7)
        assert b is not a
        torch.testing.assert_close(b, a + 1.0)
    finally:
        with torch.no_grad():
            vision.pos_embed.sub_(1.0)


def test_non_square_interpolation_matches_direct_formula(model):
    vision = model.vision
    g = vision.config.pos_embed_grid
    d = model.embed_dim
    pos = vision.pos_embed.detach()
    grid = pos[:, 1:].reshape(1, g, g, d).permute(0, 3, 1, 2)
    ref = torch.nn.functional.interpolate(
        grid, size=(3, 6), mode="bilinear", align_corners=False, antialias=True
    )
    got = vision.interpolate_pos_embed(3, 6)[:, 1:].reshape(1, 3, 6, d).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, ref)


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_shapes_names_and_urls(name):
    # Parameter counts: tests/tips/test_param_count.py (counted by hand, independently).
    preset = PRESETS[name]
    assert preset.vision.embed_dim == preset.text.hidden_size
    assert preset.image_size // 14 == preset.grid_size
    assert preset.vision_url.endswith(f"/pytorch/{preset.checkpoint}_vision.npz")
    assert get_preset(preset.short_name) is preset and get_preset(preset.name.upper()) is preset


def test_so400m_and_g_ffn_widths():
    so = get_preset("so400m14h").vision
    assert so.mlp_hidden_dim == 4304
    g = get_preset("g14h").vision
    assert g.ffn == "swiglu" and g.mlp_hidden_dim == 4096
    with torch.device("meta"):
        block = VisionTransformer(g).blocks[0]
    assert tuple(block.mlp.w12.weight.shape) == (8192, 1536)
    assert tuple(block.mlp.w3.weight.shape) == (1536, 4096)


def test_paper_backbone_short_name():
    p = get_preset("l14h")
    assert p.checkpoint == "tips_oss_l14_highres_distilled" and p.temperature == 0.0042056


def test_config_validation():
    with pytest.raises(ConfigError, match="ffn"):
        VisionConfig(embed_dim=64, depth=1, num_heads=4, ffn="moe")
    with pytest.raises(ConfigError, match="divisible"):
        VisionConfig(embed_dim=64, depth=1, num_heads=5)
    with pytest.raises(ConfigError, match="depth"):
        VisionConfig.from_dict({"embed_dim": 64, "num_heads": 4})
    assert VisionConfig(embed_dim=64, depth=1, num_heads=4, ffn="SwiGLUFused").ffn == "swiglu"
