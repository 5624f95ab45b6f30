"""Method details that one-line bugs slipped past: each checked against an independent oracle.

The expected values come from scipy (smoothing), torch's own interpolation, the prompt JSON
read directly, or strings written out by hand -- never from the function under test.
"""

from __future__ import annotations

import json
import re
from importlib import resources

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter, gaussian_filter1d

from tipsomaly.method.config import MODES
from tipsomaly.method.maps import (
    anomaly_maps,
    gaussian_blur,
    gaussian_kernel1d,
    patch_map,
    reflect_indices,
    upsample,
)
from tipsomaly.method.prompts import (
    PromptError,
    PromptSet,
    clean_class_name,
    ensemble_embedding,
    load_prompts,
)
from tipsomaly.method.scoring import (
    few_shot_anomaly,
    fuse_evidence,
    image_scores,
    state_probabilities,
)

# 4σ is not a whole number for these: scipy's radius int(4σ + 0.5) differs from int(4σ).
ODD_SIGMAS = [0.9, 1.2, 0.6, 2.7]


# -- Gaussian smoothing ------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", ODD_SIGMAS)
def test_kernel_is_scipys_impulse_response(sigma):
    """The 1-D kernel equals scipy's response to an impulse: same support, same weights."""
    n = 101
    impulse = np.zeros(n)
    impulse[n // 2] = 1.0
    response = gaussian_filter1d(impulse, sigma, truncate=4.0, mode="constant")
    support = np.flatnonzero(response)
    kernel = gaussian_kernel1d(sigma).numpy()
    assert kernel.size == support.size
    np.testing.assert_allclose(kernel, response[support], rtol=1e-12, atol=0)


@pytest.mark.parametrize("sigma", ODD_SIGMAS)
def test_blur_matches_scipy_for_sigmas_off_the_grid(sigma):
    maps = torch.rand((2, 23, 31), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = np.stack([gaussian_filter(m, sigma, mode="reflect", truncate=4.0) for m in maps])
    np.testing.assert_allclose(gaussian_blur(maps, sigma).numpy(), expected, atol=1e-12)


def test_blur_is_applied_along_both_axes_with_scipy_reflect_padding():
    # A wide, short map: the padding (radius 16) is longer than the 5-row axis.
    maps = torch.rand((1, 5, 40), generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = gaussian_filter(maps[0].numpy(), 4.0, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(gaussian_blur(maps, 4.0)[0].numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("n,radius", [(5, 2), (3, 7), (1, 3), (4, 0)])
def test_reflect_indices_are_numpys_symmetric_padding(n, radius):
    # scipy's "reflect" is numpy's "symmetric" padding.
    expected = np.pad(np.arange(n), radius, mode="symmetric")
    assert reflect_indices(n, radius).tolist() == expected.tolist()


def test_blur_rejects_maps_that_are_not_three_dimensional():
    with pytest.raises(ValueError, match="B, H, W"):
        gaussian_blur(torch.rand(4, 4), 1.0)


@pytest.mark.parametrize("sigma", [0.9, 1.2])
def test_anomaly_maps_are_upsampled_then_smoothed_like_scipy(sigma):
    """The map recipe written out: (1 - p_n + p_a)/2, torch bilinear, scipy Gaussian."""
    gen = torch.Generator().manual_seed(5)
    logits = torch.randn((2, 12, 2), generator=gen)
    probs = torch.softmax(logits, dim=-1)
    probs[1, :, 0] *= 0.5  # rows that do not sum to 1: both channels must be used
    got = anomaly_maps(probs, (3, 4), (21, 28), sigma=sigma).numpy()
    grid = ((1.0 - probs[..., 0] + probs[..., 1]) / 2.0).reshape(2, 1, 3, 4)
    up = F.interpolate(grid, size=(21, 28), mode="bilinear", align_corners=False)[:, 0]
    expected = np.stack(
        [gaussian_filter(m.astype(np.float64), sigma, truncate=4.0) for m in up.numpy()]
    )
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert got.dtype == np.float32


def test_patch_map_and_upsample_formulas():
    probs = torch.tensor([[[0.9, 0.1], [0.2, 0.7]]])
    np.testing.assert_allclose(patch_map(probs).numpy(), [[0.1, 0.75]], atol=1e-7)
    values = torch.arange(6.0).reshape(1, 6)
    expected = F.interpolate(
        values.reshape(1, 1, 2, 3), size=(5, 7), mode="bilinear", align_corners=False
    )
    torch.testing.assert_close(upsample(values, (2, 3), (5, 7)), expected[:, 0])
    multi = torch.stack([values, 2 * values], 1)  # (B, C, N)
    torch.testing.assert_close(
        upsample(multi, (2, 3), (5, 7)), torch.cat([expected, 2 * expected], 1)
    )


# -- scoring -----------------------------------------------------------------------------------
def test_state_probabilities_are_a_softmax_of_cosines_over_the_temperature():
    gen = torch.Generator().manual_seed(6)
    features = torch.randn((2, 3, 5), generator=gen) * 4  # not unit norm
    text = torch.randn((2, 5), generator=gen) * 3
    temperature = 0.07
    got = state_probabilities(features, text, temperature).numpy()
    f = features.numpy().astype(np.float64)
    t = text.numpy().astype(np.float64)
    cos = np.einsum("bnd,sd->bns", f, t)
    cos /= np.linalg.norm(f, axis=-1)[..., None] * np.linalg.norm(t, axis=-1)
    e = np.exp(cos / temperature - (cos / temperature).max(-1, keepdims=True))
    np.testing.assert_allclose(got, e / e.sum(-1, keepdims=True), atol=1e-5)
    # Per-image text (B, 2, D) gives each image its own pair.
    per_image = torch.stack([text, text.flip(0)])
    swapped = state_probabilities(features, per_image, temperature).numpy()
    np.testing.assert_allclose(swapped[0], got[0], atol=1e-6)
    np.testing.assert_allclose(swapped[1], got[1][..., ::-1], atol=1e-6)


def test_image_score_adds_the_highest_abnormal_patch_probability():
    global_probs = torch.tensor([[0.8, 0.2], [0.4, 0.6]])
    patches = torch.tensor([[[0.9, 0.1], [0.3, 0.7]], [[0.5, 0.5], [0.95, 0.05]]])
    torch.testing.assert_close(image_scores(global_probs, patches), torch.tensor([0.9, 1.1]))


def test_ensemble_embedding_is_the_normalised_mean():
    e = torch.tensor([[3.0, 4.0], [0.0, 1.0]])
    mean = np.array([1.5, 2.5])
    np.testing.assert_allclose(ensemble_embedding(e).numpy(), mean / np.linalg.norm(mean))


# -- prompts -----------------------------------------------------------------------------------
def _ensemble(**override):
    data = {
        "normal_states": ["flawless {}"],
        "abnormal_states": ["damaged {}"],
        "templates": ["a photo of a {}."],
    }
    data.update(override)
    return data


@pytest.mark.parametrize("key", ["normal_states", "abnormal_states", "templates"])
@pytest.mark.parametrize("entry", ["no placeholder", "two {} and {}", "stray { brace {}"])
def test_prompt_entries_need_exactly_one_placeholder(tmp_path, key, entry):
    data = _ensemble()
    data[key] = [data[key][0], entry]
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"mine": data}))
    with pytest.raises(PromptError, match=key):
        load_prompts("mine", path)
    with pytest.raises(PromptError):
        PromptSet.from_dict("mine", data)


@pytest.mark.parametrize(
    "data",
    [
        "not an object",
        _ensemble(templates=[]),
        _ensemble(normal_states="flawless {}"),
        _ensemble(abnormal_states=["damaged {}", 3]),
    ],
    ids=["not-a-dict", "empty", "string", "non-string"],
)
def test_malformed_ensembles_are_refused(data):
    with pytest.raises(PromptError):
        PromptSet.from_dict("x", data)


def test_a_valid_custom_file_gives_the_written_out_sentences(tmp_path):
    path = tmp_path / "single.json"
    path.write_text(
        json.dumps(
            _ensemble(
                normal_states=["flawless {}", "perfect {}"], templates=["a {}.", "the {} here."]
            )
        )
    )
    prompts = load_prompts("ignored-for-a-single-ensemble", path)
    normal, abnormal = prompts.sentences("metal nut")
    assert normal == [
        "a flawless metal nut.",
        "the flawless metal nut here.",
        "a perfect metal nut.",
        "the perfect metal nut here.",
    ]
    assert abnormal == ["a damaged metal nut.", "the damaged metal nut here."]


def test_unknown_ensemble_and_unreadable_files_are_prompt_errors(tmp_path):
    path = tmp_path / "two.json"
    path.write_text(json.dumps({"a": _ensemble(), "b": _ensemble()}))
    assert load_prompts("b", path).name == "b"
    with pytest.raises(PromptError, match="no prompt ensemble 'c'"):
        load_prompts("c", path)
    with pytest.raises(PromptError, match="cannot read"):
        load_prompts("a", tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(PromptError, match="not valid JSON"):
        load_prompts("a", bad)
    bad.write_text("[1, 2]")
    with pytest.raises(PromptError, match="JSON object"):
        load_prompts("a", bad)


@pytest.mark.parametrize(
    "raw,cleaned",
    [
        ("metal-nut", "metal nut"),
        ("metal_nut", "metal nut"),
        ("pipe_fryum", "pipe fryum"),
        ("cashew", "cashew"),
        ("  wood--grain_ ", "wood grain"),
        ("macaroni1", "macaroni1"),
    ],
)
def test_class_names_become_prompt_words(raw, cleaned):
    assert clean_class_name(raw) == cleaned


@pytest.mark.parametrize("raw", ["", "_", "-", " _-_ "])
def test_empty_class_names_are_refused(raw):
    with pytest.raises(PromptError, match="empty"):
        clean_class_name(raw)


def _builtin(name: str) -> dict:
    text = resources.files("tipsomaly.resources").joinpath("prompts.json").read_text()
    return json.loads(text)[name]


@pytest.mark.parametrize(
    "spelling,key",
    [
        ("object-agnostic", "object_agnostic"),
        ("object_agnostic", "object_agnostic"),
        ("industrial", "industrial"),
        ("medical", "medical"),
    ],
)
def test_builtin_ensembles_load_under_either_spelling(spelling, key):
    prompts = load_prompts(spelling)
    raw = _builtin(key)
    assert prompts.name == key
    assert list(prompts.normal_states) == raw["normal_states"]
    assert list(prompts.abnormal_states) == raw["abnormal_states"]
    assert list(prompts.templates) == raw["templates"]


def test_unknown_builtin_ensemble_lists_the_known_ones():
    with pytest.raises(PromptError, match="industrial, medical, object_agnostic"):
        load_prompts("object agnostic")


@pytest.mark.parametrize("truncate", [2.0, 3.0])
def test_blur_passes_truncate_on_to_the_kernel(truncate):
    """scipy's ``truncate`` decides the kernel radius; a blur that dropped it would use 4."""
    maps = torch.from_numpy(np.random.default_rng(3).random((1, 24, 24))).float()
    got = gaussian_blur(maps, 1.5, truncate=truncate)[0].numpy()
    expected = gaussian_filter(
        maps[0].numpy().astype(np.float64), 1.5, mode="reflect", truncate=truncate
    )
    np.testing.assert_allclose(got, expected, atol=1e-6)


def test_anomaly_maps_smooth_with_the_papers_sigma_by_default():
    probs = torch.from_numpy(np.random.default_rng(4).random((2, 16, 2))).float()
    probs = probs / probs.sum(-1, keepdim=True)
    default = anomaly_maps(probs, (4, 4), (28, 28))
    torch.testing.assert_close(default, anomaly_maps(probs, (4, 4), (28, 28), sigma=4.0))
    assert not torch.equal(default, anomaly_maps(probs, (4, 4), (28, 28), sigma=5.0))


def test_anomaly_maps_name_the_patch_count_that_does_not_fit():
    probs = torch.full((1, 15, 2), 0.5)
    with pytest.raises(ValueError, match=r"^15 patches do not fill"):
        anomaly_maps(probs, (4, 4), (28, 28))


_ENSEMBLE = {"normal_states": ["good {}"], "abnormal_states": ["bad {}"], "templates": ["a {}."]}


def test_load_prompts_defaults_to_the_industrial_ensemble():
    assert load_prompts().name == "industrial"


def test_prompt_file_errors_name_the_file_and_the_ensemble(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"mine": "not an object", "other": _ENSEMBLE}))
    with pytest.raises(PromptError, match=rf"^{re.escape(str(path))}: ensemble 'mine' must be"):
        load_prompts("mine", path)
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    with pytest.raises(PromptError, match=rf"^{re.escape(str(broken))} is not valid JSON"):
        load_prompts("mine", broken)


def test_underscore_keys_of_a_prompt_file_are_comments(tmp_path):
    path = tmp_path / "several.json"
    path.write_text(json.dumps({"_comment": "notes", "a": _ENSEMBLE, "b": _ENSEMBLE}))
    assert load_prompts("a", path).name == "a"
    with pytest.raises(PromptError) as info:
        load_prompts("nope", path)
    assert str(info.value).endswith("available: a, b")


# -- PromptSet.from_dict: what it keeps and what it says ---------------------------------------
def test_from_dict_keeps_every_list_as_a_tuple_in_order():
    data = {
        "normal_states": ["good {}", "fine {}"],
        "abnormal_states": ["bad {}"],
        "templates": ["a {}.", "the {}!", "{}"],
        "_comment": "ignored",
    }
    prompts = PromptSet.from_dict("mine", data)
    assert prompts == PromptSet(
        name="mine",
        normal_states=("good {}", "fine {}"),
        abnormal_states=("bad {}",),
        templates=("a {}.", "the {}!", "{}"),
    )


@pytest.mark.parametrize("key", ["normal_states", "abnormal_states", "templates"])
@pytest.mark.parametrize("value", [None, [], "good {}", ["good {}", None]])
def test_from_dict_names_the_source_the_ensemble_and_the_bad_list(key, value):
    data = _ensemble()
    if value is None:
        del data[key]
    else:
        data[key] = value
    expected = f"mine.json: ensemble 'e': '{key}' must be a non-empty list of strings"
    with pytest.raises(PromptError, match=f"^{re.escape(expected)}$"):
        PromptSet.from_dict("e", data, "mine.json")


@pytest.mark.parametrize("key", ["normal_states", "abnormal_states", "templates"])
@pytest.mark.parametrize("entry", ["none", "{} {}", "{x} {}", "{{}", "{}{"])
def test_from_dict_quotes_the_entry_without_exactly_one_placeholder(key, entry):
    data = _ensemble()
    data[key] = [data[key][0], entry]
    expected = f"prompts: ensemble 'e': {key} entry {entry!r} must contain exactly one '{{}}'"
    with pytest.raises(PromptError, match=f"^{re.escape(expected)}$"):
        PromptSet.from_dict("e", data)


def test_from_dict_refuses_what_is_not_an_object_with_the_default_source():
    with pytest.raises(PromptError, match=r"^prompts: ensemble 'e' must be an object$"):
        PromptSet.from_dict("e", ["normal_states"])


def test_from_dict_refuses_a_stray_closing_brace():
    data = _ensemble(templates=["a {} }"])
    with pytest.raises(PromptError):
        PromptSet.from_dict("e", data)


# -- few-shot scoring --------------------------------------------------------------------------
def test_few_shot_anomaly_halves_the_cosine_distance_in_fp32():
    distance = torch.tensor([0.0, 0.5, 1.0, 2.0], dtype=torch.float64)
    got = few_shot_anomaly(distance)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, torch.tensor([0.0, 0.25, 0.5, 1.0]))
    assert few_shot_anomaly(torch.tensor([1.5], dtype=torch.float16)).dtype == torch.float32


def test_fuse_evidence_per_mode():
    zero = torch.tensor([0.2, 0.9], dtype=torch.float64)
    few = torch.tensor([0.6, 0.1], dtype=torch.float16)
    cases = {
        "zero-shot": [0.2, 0.9],
        "few-shot": [0.6, 0.1],
        "fused": [0.4, 0.5],
    }
    assert set(cases) == set(MODES)
    for mode, expected in cases.items():
        got = fuse_evidence(zero, few, mode)
        assert got.dtype == torch.float32, mode
        torch.testing.assert_close(got, torch.tensor(expected), atol=1e-3, rtol=0)


@pytest.mark.parametrize("mode", ["Fused", "zero_shot", "", None])
def test_fuse_evidence_refuses_an_unknown_mode(mode):
    expected = f"mode must be one of {MODES}, got {mode!r}"
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        fuse_evidence(torch.zeros(1), torch.zeros(1), mode)
