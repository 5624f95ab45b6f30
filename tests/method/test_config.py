"""One source of settings: DetectorConfig and the eval/train configs, the CLI reading them."""

from __future__ import annotations

import argparse
import dataclasses
import inspect

import pytest

from tipsomaly.cli import predict as predict_cli
from tipsomaly.cli.main import build_parser
from tipsomaly.errors import InvalidOptionError
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
    "eval": EvalConfig,
    "train": TrainConfig,
}
#: the documented departure: predict and fit pick the fastest accurate dtype (README, Predict)
VERB_OVERRIDES = {
    "predict": {"dtype": predict_cli.PREDICT_DTYPE},
    "fit": {"dtype": predict_cli.PREDICT_DTYPE},
}


def _verb_parser(verb: str) -> argparse.ArgumentParser:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[verb]


@pytest.mark.parametrize("verb", sorted(VERB_CONFIGS))
def test_cli_defaults_choices_and_help_come_from_the_config(verb):
    config = VERB_CONFIGS[verb]
    # the fields the config declares as options (offline and progress come from -q/--offline)
    fields = {f.name: f for f in dataclasses.fields(config) if f.metadata.get("help")}
    actions = {a.dest: a for a in _verb_parser(verb)._actions}
    matched = 0
    for dest, action in actions.items():
        if dest not in fields:
            continue
        matched += 1
        spec = fields[dest]
        expected = VERB_OVERRIDES.get(verb, {}).get(dest, spec.default)
        if verb == "predict" and dest in predict_cli.PROFILE_SETTINGS:
            # no argparse default: the profile's, else the config's (apply_profile_settings)
            assert action.default is None, dest
            args = argparse.Namespace(
                profile=None, **{k: None for k in predict_cli.PROFILE_SETTINGS}
            )
            predict_cli.apply_profile_settings(args)
            assert getattr(args, dest) == expected, dest
            shown = "none" if expected is None else expected
            assert f"(default: {shown}; with --profile, the profile's)" in action.help, dest
        elif expected is dataclasses.MISSING:
            assert action.required, dest
        else:
            assert action.default == expected, (verb, dest, action.default, expected)
        if spec.metadata.get("choices"):
            assert tuple(action.choices) == tuple(spec.metadata["choices"]), (verb, dest)
    assert matched >= 10, sorted(set(actions) & set(fields))


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
    assert "(default: auto)" in _verb_parser("predict")._get_formatter()._expand_help(
        predict["dtype"]
    )


def test_the_configs_share_one_set_of_detector_defaults():
    base = DetectorConfig()
    for config in (EvalConfig(), TrainConfig(data="d", out="o")):
        for name in ("model", "prompt_type", "image_size", "sigma", "cls", "dtype", "device"):
            assert getattr(config, name) == getattr(base, name), (type(config).__name__, name)
    assert EvalSettings is EvalConfig
    assert EvalConfig().workers == 1  # as --workers (it was 0 in the library, 1 in the CLI)
    assert EvalConfig().device == "auto"  # as --device (it was cpu in the library)


def test_the_detector_constructor_takes_its_defaults_from_the_config():
    from tipsomaly.method.detector import Detector

    params = inspect.signature(Detector.__init__).parameters
    base = DetectorConfig()
    for name in ("prompt_type", "image_size", "sigma", "cls", "batch_size"):
        assert params[name].default == getattr(base, name), name


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
    # predict (and fit, serve): build_detector resolves --pixel-prompts with
    # resolve_pixel_prompts (no dataset)
    from tipsomaly.cli import options as options_cli

    assert "build_detector(" in inspect.getsource(predict_cli.cmd_predict)
    assert "resolve_pixel_prompts(args.pixel_prompts, args.model)" in inspect.getsource(
        options_cli.build_detector
    )
    assert resolve_pixel_prompts("auto", "l14h") == "picked"
    # eval: evaluate_datasets and Evaluator resolve through EvalConfig.for_dataset
    assert EvalConfig(model="l14h").for_dataset("visa").pixel_prompts == "picked"
    assert calls == [("l14h", None), ("l14h", "visa")]
    assert "for_dataset(name)" in inspect.getsource(evaluate.evaluate_datasets)
    assert evaluate.protocol_pixel_prompts is default_pixel_prompts  # the former name
