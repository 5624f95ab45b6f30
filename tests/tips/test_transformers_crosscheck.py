"""Independent cross-check of our TIPS towers against ``transformers``' Tipsv2 implementation.

A randomly initialised ``transformers.Tipsv2Model`` (every weight randomised, LayerNorm and
LayerScale included) is mapped onto the official checkpoint key layout, loaded into our towers
with our strict loader, and both are run on the same inputs.

What the two implementations share by definition (checked against transformers 5.24 source):

* vision: token order ``[cls + pos[0]], [register], [patches + pos[1:]]``; the positional
  embedding is resized with ``F.interpolate(mode="bilinear", align_corners=False,
  antialias=True)`` in fp32 straight to ``(H/14, W/14)`` (no DINOv2 0.1 offset, no bicubic), and
  is used as stored for a square image of the base grid. So interpolated sizes are compared
  with the same tolerance as the base size, square or not, up- or down-sampled.
* text: ``pooler_output`` of ``Tipsv2TextModel`` is the masked mean after ``final_layer_norm``,
  not L2-normalised (``Tipsv2Model.forward`` normalises it into ``text_embeds``). Its
  ``attention_mask`` is 1 for valid tokens: ``attention_mask = 1 - paddings``.

Where they differ, without consequence for what we compare: transformers' text MLP does not
zero the padded positions (ours multiplies by the mask after ReLU and after ``c_proj``), so
``last_hidden_state`` differs at padded positions only; padded keys are masked in attention
and excluded from the pooled mean in both, so the pooled embeddings agree.

Key names: transformers' own state dict uses ``vision_model.`` / ``text_model.`` prefixes and HF
module names; the hub files (``google/tipsv2-*``) hold the official npz keys prefixed
``vision_encoder.`` / ``text_encoder.``, which transformers renames while loading
(``conversion_mapping.py``). ``test_hub_layout_file`` checks both readers on one such file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers", minversion="5.14")

from goldens import golden_dirs  # noqa: E402
from tipsomaly.tips.checkpoint import load_into  # noqa: E402
from tipsomaly.tips.config import TextConfig, VisionConfig  # noqa: E402
from tipsomaly.tips.model import ModelFiles, build_model, read_model_description  # noqa: E402
from tipsomaly.tips.text import TextTransformer  # noqa: E402
from tipsomaly.tips.vision import VisionTransformer  # noqa: E402

TOL = 1e-5  # fp32, absolute
ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")  # transformers' attention code paths


# --------------------------------------------------------------------------------------------
# Shapes under test
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    vision: VisionConfig
    text: TextConfig
    sizes: tuple[tuple[int, int], ...]  # (H, W) image sizes; the first is the base size


CASES = {
    # golden-like: D 64, depth 2, 4 heads, MLP ratio 4, 1 register, 4x4 stored grid (56 px)
    "tiny-mlp": Case(
        VisionConfig(embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0, pos_embed_image_size=56),
        TextConfig(hidden_size=64, mlp_dim=256, num_heads=4, num_layers=2, vocab_size=512),
        sizes=((56, 56), (84, 84), (70, 98), (42, 70)),
    ),
    # SwiGLU FFN (g/14-like): hidden 256 -> (int(256 * 2/3) + 7) // 8 * 8 = 176
    "tiny-swiglu": Case(
        VisionConfig(
            embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0, ffn="swiglu", pos_embed_image_size=56
        ),
        TextConfig(hidden_size=64, mlp_dim=256, num_heads=4, num_layers=2, vocab_size=512),
        sizes=((56, 56), (84, 84), (70, 98), (42, 70)),
    ),
    # So400m-like fractional ratio 4304/1152: both sides use int(D * ratio) = int(269.0) = 269
    "so400m-ratio": Case(
        VisionConfig(
            embed_dim=72, depth=2, num_heads=4, mlp_ratio=4304 / 1152, pos_embed_image_size=56
        ),
        TextConfig(hidden_size=72, mlp_dim=269, num_heads=4, num_layers=2, vocab_size=512),
        sizes=((56, 56), (98, 98), (70, 98), (28, 42)),
    ),
    # other dims: D 96, 6 heads, 3 layers, 5x5 stored grid; text 1 layer, 4 heads, MLP 160 != 4*D
    "d96-6heads": Case(
        VisionConfig(embed_dim=96, depth=3, num_heads=6, mlp_ratio=4.0, pos_embed_image_size=70),
        TextConfig(hidden_size=96, mlp_dim=160, num_heads=4, num_layers=1, vocab_size=512),
        sizes=((70, 70), (112, 112), (70, 98), (42, 56)),
    ),
}


def size_id(case: Case, size: tuple[int, int]) -> str:
    h, w = size
    if size == case.sizes[0]:
        kind = "base"
    elif h == w:
        kind = "square"
    else:
        kind = "nonsquare"
    return f"{kind}-{h}x{w}"


# --------------------------------------------------------------------------------------------
# transformers side: config and random weights
# --------------------------------------------------------------------------------------------


def hf_config(vision: VisionConfig, text: TextConfig, temperature: float = 0.01):
    """The ``Tipsv2Config`` describing the same network as our two configs."""
    return transformers.Tipsv2Config(
        vision_config=transformers.Tipsv2VisionConfig(
            hidden_size=vision.embed_dim,
            num_hidden_layers=vision.depth,
            num_attention_heads=vision.num_heads,
            mlp_ratio=vision.mlp_ratio,
            use_swiglu_ffn=vision.ffn == "swiglu",
            num_register_tokens=vision.num_register_tokens,
            image_size=vision.pos_embed_image_size,
            patch_size=vision.patch_size,
            hidden_act="gelu",  # exact (erf) GELU
            layer_norm_eps=1e-6,
        ),
        text_config=transformers.Tipsv2TextConfig(
            vocab_size=text.vocab_size,
            hidden_size=text.hidden_size,
            intermediate_size=text.mlp_dim,
            num_hidden_layers=text.num_layers,
            num_attention_heads=text.num_heads,
            max_position_embeddings=text.max_len,
            hidden_act="relu",
            layer_norm_eps=1e-5,
        ),
        temperature_init_value=temperature,
    )


def randomise_(model: nn.Module, seed: int) -> None:
    """Overwrite every parameter with random values (no zeros/ones defaults left to hide bugs)."""
    gen = torch.Generator().manual_seed(seed)

    def randn(like: torch.Tensor, std: float, mean: float = 0.0) -> torch.Tensor:
        return mean + std * torch.randn(like.shape, generator=gen)

    done: set[str] = set()
    with torch.no_grad():
        for mod_name, module in model.named_modules():
            for p_name, p in module.named_parameters(recurse=False):
                if isinstance(module, (nn.Linear, nn.Conv2d)) and p_name == "weight":
                    value = randn(p, p[0].numel() ** -0.5)  # keeps activations O(1)
                elif isinstance(module, (nn.Linear, nn.Conv2d)):
                    value = randn(p, 0.1)
                elif isinstance(module, nn.LayerNorm):
                    value = randn(p, 0.25, mean=1.0) if p_name == "weight" else randn(p, 0.2)
                elif isinstance(module, nn.Embedding):
                    value = randn(p, p.shape[1] ** -0.5)  # scaled by sqrt(D) in the forward
                elif p_name == "lambda1":  # LayerScale: small, mixed signs
                    sign = torch.randint(0, 2, p.shape, generator=gen) * 2 - 1
                    value = sign * (0.05 + 0.5 * torch.rand(p.shape, generator=gen))
                elif p_name == "temperature":
                    value = 0.005 + 0.01 * torch.rand(p.shape, generator=gen)
                elif p_name in ("cls_token", "register_tokens", "mask_token"):
                    value = randn(p, 1.0)
                elif p_name == "position_embeddings":
                    value = randn(p, 0.5)
                else:
                    raise AssertionError(f"randomise_: no rule for {mod_name}.{p_name}")
                p.copy_(value)
                done.add(f"{mod_name}.{p_name}".lstrip("."))
    assert done == {name for name, _ in model.named_parameters()}


def make_hf_model(vision: VisionConfig, text: TextConfig, seed: int):
    model = transformers.Tipsv2Model(hf_config(vision, text)).eval()
    randomise_(model, seed)
    for name, value in model.state_dict().items():
        if value.numel() > 1:
            assert float(value.std()) > 0, f"{name} is constant"
    return model


# --------------------------------------------------------------------------------------------
# The key mapping: transformers (HF) names -> official TIPS checkpoint (npz) names
# --------------------------------------------------------------------------------------------

# (HF name pattern, official name template, (part, parts) for fused tensors else None).
# Fused tensors are concatenated along dim 0 in part order: qkv/in_proj = [q; k; v] (heads
# contiguous within each), SwiGLU w12 = [gate; up] (silu applies to the first half).
_L = r"(\d+)"
_WB = r"(weight|bias)"
VISION_RULES: list[tuple[str, str, tuple[int, int] | None]] = [
    (r"embeddings\.cls_token", "cls_token", None),
    (r"embeddings\.register_tokens", "register_tokens", None),
    (r"embeddings\.mask_token", "mask_token", None),
    (r"embeddings\.position_embeddings", "pos_embed", None),
    (rf"embeddings\.patch_embeddings\.projection\.{_WB}", r"patch_embed.proj.\1", None),
    (rf"encoder\.layer\.{_L}\.norm([12])\.{_WB}", r"blocks.\1.norm\2.\3", None),
    (rf"encoder\.layer\.{_L}\.attention\.q_proj\.{_WB}", r"blocks.\1.attn.qkv.\2", (0, 3)),
    (rf"encoder\.layer\.{_L}\.attention\.k_proj\.{_WB}", r"blocks.\1.attn.qkv.\2", (1, 3)),
    (rf"encoder\.layer\.{_L}\.attention\.v_proj\.{_WB}", r"blocks.\1.attn.qkv.\2", (2, 3)),
    (rf"encoder\.layer\.{_L}\.attention\.o_proj\.{_WB}", r"blocks.\1.attn.proj.\2", None),
    (rf"encoder\.layer\.{_L}\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma", None),
    (rf"encoder\.layer\.{_L}\.mlp\.(fc[12])\.{_WB}", r"blocks.\1.mlp.\2.\3", None),
    (rf"encoder\.layer\.{_L}\.mlp\.gate_proj\.{_WB}", r"blocks.\1.mlp.w12.\2", (0, 2)),
    (rf"encoder\.layer\.{_L}\.mlp\.up_proj\.{_WB}", r"blocks.\1.mlp.w12.\2", (1, 2)),
    (rf"encoder\.layer\.{_L}\.mlp\.down_proj\.{_WB}", r"blocks.\1.mlp.w3.\2", None),
    (rf"layernorm\.{_WB}", r"norm.\1", None),
]
_RB = r"transformer.resblocks.\1"
TEXT_RULES: list[tuple[str, str, tuple[int, int] | None]] = [
    (r"embeddings\.token_embedding\.weight", "token_embedding.weight", None),
    (rf"encoder\.layers\.{_L}\.layer_norm1\.{_WB}", _RB + r".ln_1.\2", None),
    (rf"encoder\.layers\.{_L}\.layer_norm2\.{_WB}", _RB + r".ln_2.\2", None),
    (rf"encoder\.layers\.{_L}\.self_attn\.q_proj\.{_WB}", _RB + r".attn.in_proj_\2", (0, 3)),
    (rf"encoder\.layers\.{_L}\.self_attn\.k_proj\.{_WB}", _RB + r".attn.in_proj_\2", (1, 3)),
    (rf"encoder\.layers\.{_L}\.self_attn\.v_proj\.{_WB}", _RB + r".attn.in_proj_\2", (2, 3)),
    (rf"encoder\.layers\.{_L}\.self_attn\.out_proj\.{_WB}", _RB + r".attn.out_proj.\2", None),
    (rf"encoder\.layers\.{_L}\.mlp\.fc1\.{_WB}", _RB + r".mlp.c_fc.\2", None),
    (rf"encoder\.layers\.{_L}\.mlp\.fc2\.{_WB}", _RB + r".mlp.c_proj.\2", None),
    (rf"final_layer_norm\.{_WB}", r"ln_final.\1", None),
]


def map_tower(
    state: Mapping[str, torch.Tensor], rules: list[tuple[str, str, tuple[int, int] | None]]
) -> dict[str, np.ndarray]:
    """One tower's HF state dict (prefix removed) -> official keys; every HF key must map."""
    out: dict[str, np.ndarray] = {}
    fused: dict[str, dict[int, np.ndarray]] = {}
    n_parts: dict[str, int] = {}
    for key, value in state.items():
        array = value.detach().cpu().float().numpy()
        for pattern, template, part in rules:
            match = re.fullmatch(pattern, key)
            if match is None:
                continue
            name = match.expand(template)
            if part is None:
                assert name not in out, f"two HF keys map to {name}"
                out[name] = array
            else:
                fused.setdefault(name, {})[part[0]] = array
                n_parts[name] = part[1]
            break
        else:
            raise KeyError(f"no mapping for transformers key {key!r}")
    for name, parts in fused.items():
        assert sorted(parts) == list(range(n_parts[name])), f"{name}: parts {sorted(parts)}"
        out[name] = np.concatenate([parts[i] for i in range(n_parts[name])], axis=0)
    return out


def hf_to_official(model) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], float]:
    """``Tipsv2Model`` -> (vision arrays, text arrays, temperature), official key layout."""
    state = model.state_dict()
    towers: dict[str, dict[str, torch.Tensor]] = {"vision_model.": {}, "text_model.": {}}
    temperature = None
    for key, value in state.items():
        if key == "temperature":
            temperature = float(value)
            continue
        prefix = next(p for p in towers if key.startswith(p))
        towers[prefix][key[len(prefix) :]] = value
    vision = map_tower(towers["vision_model."], VISION_RULES)
    text = map_tower(towers["text_model."], TEXT_RULES)
    assert temperature is not None
    return vision, text, temperature


# --------------------------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------------------------


@dataclass
class Pair:
    case: Case
    hf: object  # transformers.Tipsv2Model
    vision: VisionTransformer
    text: TextTransformer


_pairs: dict[str, Pair] = {}


def get_pair(name: str) -> Pair:
    if name not in _pairs:
        case = CASES[name]
        hf = make_hf_model(case.vision, case.text, seed=sorted(CASES).index(name))
        vision_arrays, text_arrays, _ = hf_to_official(hf)
        vision = VisionTransformer(case.vision)
        text = TextTransformer(case.text)
        load_into(vision, vision_arrays, f"transformers {name} (vision)")  # strict
        load_into(text, text_arrays, f"transformers {name} (text)")  # strict
        _pairs[name] = Pair(case, hf, vision.eval(), text.eval())
    return _pairs[name]


def max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    return float((a.detach().float() - b.detach().float()).abs().max())


def random_images(n: int, h: int, w: int, seed: int) -> torch.Tensor:
    return torch.rand((n, 3, h, w), generator=torch.Generator().manual_seed(seed))


def random_text(
    lengths: list[int], vocab: int, max_len: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (padding id 0) and our paddings (1 = padded)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros((len(lengths), max_len), dtype=torch.long)
    paddings = torch.ones((len(lengths), max_len), dtype=torch.long)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(1, vocab, (n,), generator=gen)
        paddings[row, :n] = 0
    return ids, paddings


def hf_vision(hf, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cls1, cls2, patches) from ``Tipsv2VisionModel.last_hidden_state`` (after layernorm)."""
    seq = hf.vision_model(pixel_values=images).last_hidden_state
    r = hf.config.vision_config.num_register_tokens
    return seq[:, :1], seq[:, 1:2], seq[:, 1 + r :]


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(CASES))
def test_ffn_hidden_width(name):
    """Both sides derive the same FFN width from (D, mlp_ratio, ffn)."""
    pair = get_pair(name)
    layer = pair.hf.vision_model.encoder.layer[0]
    hf_width = (
        layer.mlp.gate_proj.out_features
        if pair.case.vision.ffn == "swiglu"
        else (layer.mlp.fc1.out_features)
    )
    assert hf_width == pair.case.vision.mlp_hidden_dim
    assert pair.hf.text_model.encoder.layers[0].mlp.fc1.out_features == pair.case.text.mlp_dim


VISION_PARAMS = [
    pytest.param(name, size, id=f"{name}-{size_id(case, size)}")
    for name, case in CASES.items()
    for size in case.sizes
]


@pytest.mark.parametrize("name, size", VISION_PARAMS)
def test_vision_tower(name, size, record_property):
    pair = get_pair(name)
    h, w = size
    p = pair.case.vision.patch_size
    gh, gw = h // p, w // p
    images = random_images(2, h, w, seed=h * 1000 + w)
    with torch.no_grad():
        # The positional embedding alone: identical definitions, so expect (near) bit-equality.
        ours_pos = pair.vision.interpolate_pos_embed(gh, gw)
        dummy = torch.empty(1, 1 + gh * gw, pair.case.vision.embed_dim)
        theirs_pos = pair.hf.vision_model.embeddings.interpolate_pos_encoding(dummy, h, w)
        pos_diff = max_abs(ours_pos, theirs_pos)
        record_property("pos_embed", pos_diff)
        assert pos_diff <= 1e-6, f"pos embed {gh}x{gw}: max abs diff {pos_diff:.3g}"

        ours = pair.vision(images)
        assert ours.patches.shape == (2, gh * gw, pair.case.vision.embed_dim)
        for impl in ATTENTION_IMPLEMENTATIONS:
            pair.hf.set_attn_implementation(impl)
            theirs = hf_vision(pair.hf, images)
            for label, a, b in zip(("cls1", "cls2", "patches"), ours, theirs, strict=True):
                diff = max_abs(a, b)
                record_property(f"{impl}-{label}", diff)
                assert diff <= TOL, f"{label} ({impl}) at {h}x{w}: max abs diff {diff:.3g}"


TEXT_LENGTHS = [64, 1, 2, 17, 40, 63]  # a full-length row and a 1-token row included


@pytest.mark.parametrize("name", list(CASES))
def test_text_tower(name, record_property):
    pair = get_pair(name)
    cfg = pair.case.text
    ids, paddings = random_text(TEXT_LENGTHS, cfg.vocab_size, cfg.max_len, seed=7)
    with torch.no_grad():
        ours = pair.text(ids, paddings)
        for impl in ATTENTION_IMPLEMENTATIONS:
            pair.hf.set_attn_implementation(impl)
            out = pair.hf.text_model(input_ids=ids, attention_mask=1 - paddings)
            diff = max_abs(ours, out.pooler_output)  # pooled, not normalised
            record_property(f"{impl}-pooled", diff)
            assert diff <= TOL, f"pooled text ({impl}): max abs diff {diff:.3g}"
            # Tipsv2Model's own text_embeds are the L2-normalised pooled output.
            full = pair.hf(input_ids=ids, attention_mask=1 - paddings)
            diff = max_abs(F.normalize(ours, dim=-1), full.text_embeds)
            record_property(f"{impl}-normalised", diff)
            assert diff <= TOL


def test_hub_layout_file(tmp_path, record_property):
    """A hub-style ``model.safetensors`` (npz keys prefixed ``vision_encoder.`` /
    ``text_encoder.``) through our ``build_model``, and through transformers' own loader."""
    from safetensors.numpy import save_file
    from sentencepiece import SentencePieceProcessor

    tokenizer = golden_dirs()[0] / "tokenizer.model"
    vocab = SentencePieceProcessor(model_file=str(tokenizer)).GetPieceSize()
    case = CASES["tiny-mlp"]
    text_config = replace(case.text, vocab_size=max(vocab, case.text.vocab_size))
    hf = make_hf_model(case.vision, text_config, seed=99)
    vision_arrays, text_arrays, temperature = hf_to_official(hf)
    combined = {f"vision_encoder.{k}": v for k, v in vision_arrays.items()}
    combined |= {f"text_encoder.{k}": v for k, v in text_arrays.items()}
    path = tmp_path / "model.safetensors"
    save_file({k: np.ascontiguousarray(v) for k, v in combined.items()}, str(path))

    model = build_model(
        case.vision,
        text_config,
        ModelFiles(tokenizer=Path(tokenizer), combined=path, temperature=temperature),
    )
    assert model.temperature == temperature

    texts = ["a photo of a damaged object", "x", "flawless " * 80]  # the last one is truncated
    ids, paddings = model.tokenize(texts)
    assert int(paddings[2].sum()) == 0 and int((1 - paddings[1]).sum()) >= 1
    images = random_images(2, 70, 98, seed=3)
    with torch.no_grad():
        ours_img = model.encode_image(images)
        ours_txt = model.text(ids, paddings)
        full = hf(input_ids=ids, attention_mask=1 - paddings, pixel_values=images)
    theirs_img = hf_vision(hf, images)
    for label, a, b in zip(("cls1", "cls2", "patches"), ours_img, theirs_img, strict=True):
        diff = max_abs(a, b)
        record_property(f"{label}", diff)
        assert diff <= TOL, f"{label}: {diff:.3g}"
    diff = max_abs(ours_txt, full.text_model_output.pooler_output)
    record_property("text-pooled", diff)
    assert diff <= TOL
    # Logits: cosine(cls1, text) / temperature; compared on the cosine scale.
    cos = F.normalize(ours_img.cls1[:, 0], dim=-1) @ F.normalize(ours_txt, dim=-1).T
    diff = max_abs(cos / model.temperature * temperature, full.logits_per_image * temperature)
    record_property("cosine", diff)
    assert diff <= TOL

    # transformers reads the very same file (its conversion mapping renames vision_encoder. ->
    # vision_model., splits qkv / in_proj / w12 and renames the modules), so the layout we
    # write and read is the one transformers expects from the hub. The temperature is not in
    # the file (transformers keeps its config's temperature_init_value).
    hf.config.save_pretrained(tmp_path)
    reloaded = transformers.Tipsv2Model.from_pretrained(tmp_path).eval()
    want, got = hf.state_dict(), reloaded.state_dict()
    assert sorted(want) == sorted(got)
    for key in want:
        if key != "temperature":
            assert torch.equal(want[key], got[key]), key
    assert float(got["temperature"]) == pytest.approx(hf.config.temperature_init_value)


def test_transformers_reproduces_golden(golden, tmp_path, record_property):
    """Triangulation: transformers, fed the golden weights in hub layout, against the
    published reference outputs (so a disagreement above can be attributed to one side)."""
    from safetensors.numpy import save_file

    vision_config, text_config = read_model_description(golden.dir / "golden.json")
    with np.load(golden.dir / vision_config.npz, allow_pickle=False) as data:
        combined = {f"vision_encoder.{k}": data[k] for k in data.files}
    with np.load(golden.dir / text_config.npz, allow_pickle=False) as data:
        combined |= {
            f"text_encoder.{k}": data[k] for k in data.files if k != text_config.temperature_key
        }
    save_file(
        {k: np.ascontiguousarray(v) for k, v in combined.items()},
        str(tmp_path / "model.safetensors"),
    )
    hf_config(vision_config, text_config).save_pretrained(tmp_path)
    hf = transformers.Tipsv2Model.from_pretrained(tmp_path).eval()

    base = vision_config.pos_embed_image_size
    tol_features = golden.tol["features_abs"]
    with torch.no_grad():
        for prefix, images in (
            ("", torch.from_numpy(golden["images"])),
            ("base_", torch.from_numpy(golden["images"][:2, :, :base, :base])),
        ):
            theirs = hf_vision(hf, images)
            for label, value in zip(("cls1", "cls2", "patches"), theirs, strict=True):
                diff = max_abs(value, torch.from_numpy(golden[prefix + label]))
                record_property(prefix + label, diff)
                assert diff <= tol_features, f"{prefix}{label}: {diff:.3g}"
        ids = torch.from_numpy(golden["text_ids"]).long()
        mask = 1 - torch.from_numpy(golden["text_paddings"]).long()
        pooled = hf.text_model(input_ids=ids, attention_mask=mask).pooler_output
    diff = max_abs(pooled, torch.from_numpy(golden["text_emb"]))
    record_property("text_emb", diff)
    assert diff <= golden.tol["text_embedding_abs"]
