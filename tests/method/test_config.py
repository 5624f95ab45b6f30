"""One source of settings: DetectorConfig and the eval/train configs, the CLI reading them."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from tipsomaly.cli import options as options_cli
from tipsomaly.cli.main import build_parser
from tipsomaly.errors import InvalidOptionError, SetupMismatchError
from tipsomaly.method import config as config_module
from tipsomaly.method.config import (
    CLS_CHOICES,
    DetectorConfig,
    default_pixel_prompts,
    resolve_pixel_prompts,
)
from tipsomaly.metrics.summary import AUPRO_KINDS
from tipsomaly.runners import evaluate
from tipsomaly.runners.config import (
    EvalConfig,
    EvalSettings,
    TrainConfig,
    TrainError,
    TrainSettingsError,
)

VERB_CONFIGS = {
    "predict": DetectorConfig,
    "fit": DetectorConfig,
    "serve": DetectorConfig,
    "export": DetectorConfig,
    "eval": EvalConfig,
    "train": TrainConfig,
}
#: the documented departure: the verbs people run on their own images pick the fastest
#: accurate dtype (README, Predict)
VERB_OVERRIDES = {verb: options_cli.DEFAULTS for verb in ("predict", "fit", "serve")}


def _verb_parser(verb: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[verb]


def _shown(value) -> str:
    if value is None or value == ():
        return "none"
    if isinstance(value, (list, tuple)):
        return " ".join(_shown(v) for v in value)
    return f"{value:g}" if isinstance(value, float) else str(value)


@pytest.mark.parametrize("verb", sorted(VERB_CONFIGS))
def test_cli_defaults_choices_and_help_come_from_the_config(verb):
    """Every config field with help is an option of the verb (unless the verb skips it), unset
    by default, its help showing the default the config (or the verb) gives it; building the
    config from no options gives exactly those defaults."""
    config = VERB_CONFIGS[verb]
    fields = {f.name: f for f in dataclasses.fields(config) if f.metadata.get("help")}
    parser = _verb_parser(verb)
    actions = {a.dest: a for a in parser._actions}
    matched = 0
    for dest, action in actions.items():
        if dest not in fields:
            continue
        matched += 1
        spec = fields[dest]
        expected = VERB_OVERRIDES.get(verb, {}).get(dest, spec.default)
        if expected is dataclasses.MISSING:
            assert action.required, dest
            continue
        assert action.default in (None, False), (verb, dest, action.default)  # unset
        if "default" in spec.metadata["help"]:  # the help explains its default itself
            assert "default" in action.help, (verb, dest)
        elif not isinstance(expected, bool):
            assert f"(default: {_shown(expected)}" in action.help, (verb, dest, action.help)
        if spec.metadata.get("choices"):
            assert tuple(action.choices) == tuple(spec.metadata["choices"]), (verb, dest)
        flag = spec.metadata.get("flag") or "--" + dest.replace("_", "-")
        assert flag in action.option_strings, (verb, dest)
    assert matched >= 10, sorted(set(actions) & set(fields))
    required = {
        "predict": ["x", "--class-name", "c"],
        "fit": ["x", "--class-name", "c", "--out", "o"],
        "export": ["--out", "o"],
        "eval": ["--data", "d"],
    }
    if verb in required:
        args = parser.parse_args(required[verb])
        built = options_cli.config_from_args(args, config, defaults=VERB_OVERRIDES.get(verb))
        defaults = config(**VERB_OVERRIDES.get(verb, {}))
        assert built == defaults, verb


def test_every_verb_takes_tiling_roi_and_profiles():
    """The settings that compose (issue 19): no verb that scores images lacks one."""
    for verb in ("predict", "fit", "serve", "export", "eval"):
        flags = {s for a in _verb_parser(verb)._actions for s in a.option_strings}
        wanted = {"--tile", "--tile-overlap", "--roi"} | ({"--profile"} if verb != "fit" else set())
        assert wanted <= flags, (verb, wanted - flags)


def test_help_text_shows_the_config_defaults():
    formatter = _verb_parser("eval")._get_formatter()
    actions = {a.dest: a for a in _verb_parser("eval")._actions}
    defaults = EvalConfig()
    for name, shown in [
        ("sigma", "(default: 4)"),
        ("image_size", f"(default: {defaults.image_size})"),
        ("workers", f"(default: {defaults.workers})"),
        ("device", f"(default: {defaults.device})"),
        ("dtype", f"(default: {defaults.dtype})"),
    ]:
        assert shown in formatter._expand_help(actions[name]), name
    predict = {a.dest: a for a in _verb_parser("predict")._actions}
    text = _verb_parser("predict")._get_formatter()._expand_help(predict["dtype"])
    assert "(default: auto)" in text
    tile = _verb_parser("predict")._get_formatter()._expand_help(predict["tile"])
    assert "(default: none; with --profile, the profile's" in tile


def test_a_profile_gives_its_settings_and_refuses_contradicting_options(tmp_path):
    """DetectorConfig.from_record: recorded settings first, given options on top, a given
    option that contradicts what the scores depend on refused naming both values."""
    recorded = {"image_size": 98, "sigma": 2.0, "tile": 140, "tile_overlap": 0.5, "cls": "cls2"}
    config = DetectorConfig.from_record(recorded, source="P", given={"batch_size": 3})
    assert (config.image_size, config.sigma, config.cls, config.batch_size) == (98, 2.0, "cls2", 3)
    assert config.tiling == {"tile": 140, "overlap": 0.5}
    same = DetectorConfig.from_record(recorded, source="P", given={"image_size": 98, "tile": 140})
    assert same == config.replace(batch_size=8)
    with pytest.raises(SetupMismatchError) as info:
        DetectorConfig.from_record(recorded, source="P", given={"sigma": 4.0, "tile": "auto"})
    text = str(info.value)
    assert text.startswith("P was fitted with another setup: ")
    assert "sigma 2.0 (this run: 4.0)" in text
    assert "tiling tile 140, overlap 0.5 (this run: tile auto, overlap 0.5)" in text
    untiled = DetectorConfig.from_record(
        {"image_size": 98}, source="Q", given={"tile_overlap": 0.4}
    )
    assert untiled.tile is None  # an overlap without tiles contradicts nothing
    with pytest.raises(SetupMismatchError, match="tiling none"):
        DetectorConfig.from_record({"image_size": 98}, source="Q", given={"tile": 98})
    # what is not checked (the verb's business) is taken as given
    loose = DetectorConfig.from_record(recorded, source="P", given={"sigma": 1.0}, checked=())
    assert loose.sigma == 1.0


def test_the_configs_share_one_set_of_detector_defaults():
    base = DetectorConfig()
    for config in (EvalConfig(), TrainConfig(data="d", out="o")):
        for name in ("model", "prompt_type", "image_size", "sigma", "cls", "dtype", "device"):
            assert getattr(config, name) == getattr(base, name), (type(config).__name__, name)
    assert EvalSettings is EvalConfig
    assert EvalConfig().workers == 1  # as --workers (it was 0 in the library, 1 in the CLI)
    assert EvalConfig().device == "auto"  # as --device (it was cpu in the library)


def test_the_detector_takes_every_default_from_the_config():
    """Detector(**settings) builds a DetectorConfig: no default is written twice."""
    from tipsomaly.method.detector import Detector

    params = inspect.signature(Detector.__init__).parameters
    assert params["model"].default == DetectorConfig().model
    assert {"settings", "text_cache", "model", "self"} == set(params)  # the rest: the config


@pytest.mark.parametrize(
    "change, words",
    [
        ({"image_size": 0}, ["image_size", "positive"]),
        ({"image_size": 518.0}, ["image_size", "whole number"]),
        ({"sigma": -1.0}, ["sigma", ">= 0"]),
        ({"sigma": float("nan")}, ["sigma", "finite"]),
        ({"cls": "cls3"}, ["cls", "cls1, cls2"]),
        ({"dtype": "fp64"}, ["dtype", "fp32"]),
        ({"batch_size": 0}, ["batch_size"]),
        ({"prompt_type": " "}, ["prompt_type"]),
        ({"model": ""}, ["model"]),
        ({"device": ""}, ["device"]),
    ],
)
def test_detector_config_refuses_values_that_cannot_work(change, words):
    for config in (DetectorConfig, EvalConfig):
        with pytest.raises(InvalidOptionError) as info:
            config(**change)
        assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"workers": -1}, ["workers", "0 or more"]),
        ({"aupro": "pro"}, ["aupro", "zsad, mvtec"]),
    ],
)
def test_eval_config_checks(change, words):
    with pytest.raises(InvalidOptionError) as info:
        EvalConfig(**change)
    assert all(w in str(info.value) for w in words), str(info.value)


@pytest.mark.parametrize(
    "change, words",
    [
        ({"epochs": 0}, ["epochs"]),
        ({"lr": 0.0}, ["lr", "> 0"]),
        ({"betas": (0.5, 1.0)}, ["betas", "[0, 1)"]),
        ({"betas": (0.5,)}, ["betas", "two values"]),
        ({"n_prompt": 0}, ["n_prompt"]),
        ({"seed": -1}, ["seed"]),
        ({"seed": 2**64}, ["seed", "2**64"]),
        ({"cache_dtype": "bf16"}, ["cache_dtype", "fp32, fp16"]),
        ({"aupro": "x"}, ["aupro"]),
        ({"pixel_prompts": "trained-on-mvtec"}, ["pixel_prompts", "learns"]),
        ({"init_std": -0.1}, ["init_std"]),
    ],
)
def test_train_config_checks(change, words):
    with pytest.raises(TrainSettingsError) as info:  # a TrainError and an InvalidOptionError
        TrainConfig(data="d", out="o", **change)
    assert isinstance(info.value, TrainError) and isinstance(info.value, InvalidOptionError)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_configs_are_frozen_and_keep_their_former_names():
    config = TrainConfig(data="d", out="o", sigma=2.0)
    assert config.eval_sigma == 2.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.sigma = 3.0  # type: ignore[misc]
    assert CLS_CHOICES == ("cls1", "cls2")
    assert dict(dataclasses.fields(EvalConfig)[0].metadata)  # help travels with the field
    aupro = next(f for f in dataclasses.fields(EvalConfig) if f.name == "aupro")
    assert aupro.metadata["choices"] == AUPRO_KINDS


def test_none_is_one_spelling_and_auto_resolves_per_dataset():
    assert DetectorConfig(pixel_prompts="None").pixel_prompts is None
    auto = EvalConfig(model="l14h")
    assert auto.for_dataset("mvtec_anomaly_detection").pixel_prompts == "trained-on-visa"
    assert auto.for_dataset("visa").pixel_prompts == "trained-on-mvtec"
    assert auto.for_dataset().pixel_prompts == "trained-on-mvtec"
    assert EvalConfig(model="b14h").for_dataset("mvtec").pixel_prompts is None
    given = EvalConfig(model="l14h", pixel_prompts="mine.safetensors")
    assert given.for_dataset("mvtec") is given


@pytest.mark.parametrize(
    "model, dataset, expected",
    [
        ("l14h", None, "trained-on-mvtec"),
        ("tips-v1-l14-highres", None, "trained-on-mvtec"),
        ("l14h", "MVTec-AD", "trained-on-visa"),
        ("l14h", "mvtec_anomaly_detection", "trained-on-visa"),
        ("l14h", "visa", "trained-on-mvtec"),
        ("l14h", "mpdd", "trained-on-mvtec"),
        ("b14h", None, None),
        ("b14h", "mvtec", None),
        ("no/such/dir", None, None),
    ],
)
def test_default_pixel_prompts_per_backbone_and_dataset(model, dataset, expected):
    assert default_pixel_prompts(model, dataset) == expected


def test_both_verbs_take_l14h_prompts_from_one_function(monkeypatch):
    """predict's and eval's "auto" both call method.config.default_pixel_prompts."""
    calls = []

    def fake(model, dataset=None):
        calls.append((model, dataset))
        return "picked"

    monkeypatch.setattr(config_module, "default_pixel_prompts", fake)
    # predict (and fit, serve, export): the Detector resolves its config's "auto" with
    # for_dataset() (no dataset)
    from tipsomaly.method import detector

    assert ".for_dataset()" in inspect.getsource(detector.Detector.__init__)
    assert resolve_pixel_prompts("auto", "l14h") == "picked"
    # eval: evaluate_datasets and Evaluator resolve through EvalConfig.for_dataset
    assert EvalConfig(model="l14h").for_dataset("visa").pixel_prompts == "picked"
    assert calls == [("l14h", None), ("l14h", "visa")]
    assert "for_dataset(name)" in inspect.getsource(evaluate.evaluate_datasets)
