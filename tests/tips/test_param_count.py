"""Parameter counts of every preset, counted by hand from the published architecture.

The counts are written out from the TIPS architecture (DINOv2-style ViT with one register
token and LayerScale; CLIP-style text transformer with sinusoidal positions) and the size
table of the design notes -- not from the code's configs -- and then compared with the towers
the code builds, with the preset's recorded figures and with the golden checkpoint's arrays.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tipsomaly.tips.presets import PRESETS
from tipsomaly.tips.text import TextTransformer
from tipsomaly.tips.vision import VisionTransformer

PATCH = 14
VOCAB = 32000

# Size → (D, vision depth, FFN hidden width, SwiGLU, text layers, text MLP width), from the
# design notes' table (g's SwiGLU: w12 1536 → 2·4096, w3 4096 → 1536).
SIZES = {
    "s14": (384, 12, 1536, False, 12, 1536),
    "b14": (768, 12, 3072, False, 12, 3072),
    "l14": (1024, 24, 4096, False, 12, 4096),
    "so400m14": (1152, 27, 4304, False, 27, 4304),
    "so14": (1152, 27, 4304, False, 27, 4304),
    "g14": (1536, 40, 4096, True, 12, 6144),
}


def vision_count(
    d: int,
    depth: int,
    hidden: int,
    swiglu: bool,
    grid: int,
    patch: int = PATCH,
    registers: int = 1,
    layer_scale: bool = True,
) -> int:
    """Every array of a vision checkpoint, by hand."""
    patch_embed = 3 * patch * patch * d + d  # conv weight + bias
    tokens = d + registers * d + d  # cls token, the register tokens, the (unused) mask token
    pos_embed = (1 + grid * grid) * d  # cls position + a grid x grid table
    attention = (3 * d * d + 3 * d) + (d * d + d)  # fused qkv, output projection
    if swiglu:
        ffn = (d * 2 * hidden + 2 * hidden) + (hidden * d + d)  # w12, w3
    else:
        ffn = (d * hidden + hidden) + (hidden * d + d)  # fc1, fc2
    norms_and_scales = 2 * (2 * d) + (2 * d if layer_scale else 0)  # norm1, norm2, ls1, ls2
    block = attention + ffn + norms_and_scales
    return patch_embed + tokens + pos_embed + depth * block + 2 * d  # + final norm


def text_count(d: int, layers: int, mlp: int, vocab: int = VOCAB) -> int:
    """Every weight of a text checkpoint (not the temperature), by hand."""
    attention = (3 * d * d + 3 * d) + (d * d + d)  # in_proj, out_proj
    mlp_params = (d * mlp + mlp) + (mlp * d + d)  # c_fc, c_proj
    block = attention + mlp_params + 2 * (2 * d)  # + ln_1, ln_2
    return vocab * d + layers * block + 2 * d  # token embedding, blocks, ln_final


def _size_of(preset) -> str:
    # Checkpoint names: tips_oss_l14_highres_distilled, tips_v2_oss_so14, ...
    for part in preset.checkpoint.split("_"):
        if part in SIZES:
            return part
    raise AssertionError(f"no size in checkpoint name {preset.checkpoint}")


def _expected(preset) -> tuple[int, int]:
    d, depth, hidden, swiglu, layers, mlp = SIZES[_size_of(preset)]
    grid = 16 if preset.checkpoint.endswith("lowres") else 32  # 224 px / 448 px checkpoints
    return vision_count(d, depth, hidden, swiglu, grid), text_count(d, layers, mlp)


def test_hand_count_of_the_paper_backbone():
    # L/14 at 448 px, summed term by term: 24 blocks of 12,598,272; patch embedding 603,136;
    # 3 tokens; 1025 x 1024 positions; final norm. Text: 32000 x 1024 embedding, 12 blocks of
    # 12,596,224, ln_final.
    assert vision_count(1024, 24, 4096, False, 32) == (
        24 * 12_598_272 + 603_136 + 3 * 1024 + 1025 * 1024 + 2 * 1024
    )
    assert text_count(1024, 12, 4096) == 32000 * 1024 + 12 * 12_596_224 + 2 * 1024
    assert _expected(PRESETS["tips-v1-l14-highres"]) == (304_016_384, 183_924_736)


@pytest.mark.parametrize("name", list(PRESETS))
def test_towers_have_the_hand_counted_parameters(name):
    preset = PRESETS[name]
    n_vision, n_text = _expected(preset)
    with torch.device("meta"):
        vision = VisionTransformer(preset.vision)
        text = TextTransformer(preset.text)
    assert sum(p.numel() for p in vision.parameters()) == n_vision
    assert sum(p.numel() for p in text.parameters()) == n_text


@pytest.mark.parametrize("name", list(PRESETS))
def test_recorded_sizes_are_the_hand_counts_rounded(name):
    preset = PRESETS[name]
    n_vision, n_text = _expected(preset)
    assert preset.params_vision_m == round(n_vision / 1e6, 2)
    assert preset.params_text_m == round(n_text / 1e6, 2)


# The TIPS paper's rounded sizes in millions (vision, text); its vision figures leave part of
# the positional embedding out, so they are only close.
PUBLISHED = {
    "s14": (21.6, 33.6),
    "b14": (85.7, 109.6),
    "l14": (303.2, 183.9),
    "so400m14": (412.4, 448.3),
    "so14": (412.4, 448.3),
    "g14": (1100.0, 389.1),
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_hand_counts_agree_with_the_published_sizes(name):
    preset = PRESETS[name]
    n_vision, n_text = _expected(preset)
    vision_m, text_m = PUBLISHED[_size_of(preset)]
    assert abs(n_text / 1e6 - text_m) < 0.05
    assert abs(n_vision / 1e6 - vision_m) / vision_m < 0.04


def test_golden_checkpoint_arrays_have_the_hand_counted_size(golden):
    v, t = golden.config["vision"], golden.config["text"]
    with np.load(golden.dir / v["npz"]) as z:
        vision_file = sum(z[k].size for k in z.files)
    with np.load(golden.dir / t["npz"]) as z:
        text_file = sum(z[k].size for k in z.files if k != t.get("temperature_key", "temperature"))
    d = v["embed_dim"]
    hidden = int(d * v["mlp_ratio"])
    swiglu = "".join(ch for ch in v.get("ffn", "mlp").lower() if ch.isalnum()).startswith("swiglu")
    if swiglu:  # SwiGLU keeps 2/3 of the MLP width, rounded up to a multiple of 8 (g/14)
        hidden = (int(hidden * 2 / 3) + 7) // 8 * 8
    grid = v["pos_embed_image_size"] // v["patch_size"]
    assert vision_file == vision_count(
        d,
        v["depth"],
        hidden,
        swiglu,
        grid,
        patch=v["patch_size"],
        registers=v.get("num_register_tokens", 1),
        layer_scale=v.get("layer_scale", True),
    )
    assert text_file == text_count(t["hidden_size"], t["num_layers"], t["mlp_dim"], t["vocab_size"])
