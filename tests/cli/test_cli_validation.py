"""One line per mistake: options, model.json, outputs and logging, checked before any model loads.

Every case here used to end in a traceback, a silently accepted value, or work lost at the end.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import math
import pkgutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from goldens import golden_dirs
from tipsomaly import validation
from tipsomaly.cli import main as main_module
from tipsomaly.cli.main import build_parser, main
from tipsomaly.data.images import ImageLoadError
from tipsomaly.errors import InvalidOptionError, OutputError, TipsomalyError
from tipsomaly.tips.config import ConfigError, read_model_json

GOLDEN = golden_dirs()[0]


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def description() -> dict:
    """A valid model.json (the golden tiny model's towers)."""
    config = json.loads((GOLDEN / "golden.json").read_text())
    return {"vision": dict(config["vision"]), "text": dict(config["text"])}


@pytest.fixture
def model_dir(tmp_path, description) -> Path:
    """A model directory whose model.json is valid but whose weights are absent: any test that
    got as far as loading the model would fail with a checkpoint error, not the expected one."""
    d = tmp_path / "model"
    d.mkdir()
    (d / "model.json").write_text(json.dumps(description))
    return d


@pytest.fixture
def images(tmp_path) -> Path:
    root = tmp_path / "images"
    root.mkdir()
    Image.fromarray(np.full((28, 28, 3), 128, np.uint8)).save(root / "a.png")
    return root


@pytest.fixture
def restore_logging():
    """main() configures logger levels; put them back so other tests see the defaults."""
    names = ["", "tipsomaly", *main_module.THIRD_PARTY, *main_module.ALWAYS_QUIET]
    names += ["PIL.PngImagePlugin"]
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def run(argv: list[str], capsys) -> tuple[int, str]:
    """Exit status and stderr of ``tipsomaly ARGV`` (argparse's exits included)."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("tipsomaly: error: "), err
    assert "Traceback" not in err
    return lines[0]


# -- the validation module --------------------------------------------------------------------
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_finite_float_refuses_nan_and_inf(value):
    with pytest.raises(InvalidOptionError, match=r"--sigma must be a finite number"):
        validation.finite_float(value, "--sigma")
    assert validation.finite_float(3, "--sigma") == 3.0


@pytest.mark.parametrize("value", ["0.5", True, None, [1]])
def test_finite_float_is_strict_about_types(value):
    with pytest.raises(InvalidOptionError, match="must be a number"):
        validation.finite_float(value, "x")


def test_in_range_closed_and_open_ends():
    assert validation.in_range(0, "t", 0, 1) == 0.0 and validation.in_range(1, "t", 0, 1) == 1.0
    with pytest.raises(InvalidOptionError, match=r"t must be in \[0, 1\], got 1.5"):
        validation.in_range(1.5, "t", 0, 1)
    with pytest.raises(InvalidOptionError, match=r"must be in \[0, 1\)"):
        validation.in_range(1.0, "b", 0, 1, high_open=True)
    with pytest.raises(InvalidOptionError, match="must be > 0"):
        validation.in_range(0.0, "lr", 0, None, low_open=True)
    with pytest.raises(InvalidOptionError, match=r"got 5$"):  # as typed, not 5.0
        validation.in_range(5.0, "t", 0, 1)
    with pytest.raises(InvalidOptionError, match=r"\(seconds\)"):
        validation.in_range(-1, "wait", 0, None, hint="seconds")


def test_integer_checks():
    assert validation.positive_int(3, "n") == 3 and validation.non_negative_int(0, "n") == 0
    for bad in (0, -1):
        with pytest.raises(InvalidOptionError, match="positive whole number"):
            validation.positive_int(bad, "n")
    for bad in (True, 2.0, "2"):
        with pytest.raises(InvalidOptionError, match="whole number"):
            validation.positive_int(bad, "n")
    with pytest.raises(InvalidOptionError, match="0 or more"):
        validation.non_negative_int(-1, "--workers")


def test_multiple_of_names_the_nearest_valid_values():
    assert validation.multiple_of(70, "--image-size", 14) == 70
    with pytest.raises(InvalidOptionError) as info:
        validation.multiple_of(72, "--image-size", 14, what="the patch size")
    assert str(info.value) == (
        "--image-size must be a multiple of 14 (the patch size), got 72; use 70 or 84"
    )
    with pytest.raises(InvalidOptionError, match="use 14$"):
        validation.multiple_of(5, "s", 14)  # 0 is not offered


def test_choice_and_non_empty():
    assert validation.choice("cls2", "--cls", ["cls1", "cls2"]) == "cls2"
    with pytest.raises(InvalidOptionError, match="one of cls1, cls2"):
        validation.choice("cls3", "--cls", ["cls1", "cls2"])
    with pytest.raises(InvalidOptionError, match="must not be empty"):
        validation.non_empty("  ", "--class-name")


def test_errors_keep_their_builtin_base():
    with pytest.raises(ValueError):
        validation.positive_int(0)
    assert issubclass(InvalidOptionError, TipsomalyError)
    assert issubclass(ImageLoadError, TipsomalyError) and issubclass(ImageLoadError, OSError)


def _subclasses(cls: type) -> set[type]:
    found = set(cls.__subclasses__())
    for sub in list(found):
        found |= _subclasses(sub)
    return found


def test_every_concrete_error_keeps_a_builtin_base():
    """errors.py's promise, for every error class of the package (those without subclasses of
    their own): a builtin base besides Exception, so that callers catching it keep working."""
    import tipsomaly

    for module in pkgutil.walk_packages(tipsomaly.__path__, "tipsomaly."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)
    concrete = [c for c in _subclasses(TipsomalyError) if not c.__subclasses__()]
    assert ImageLoadError in concrete and OutputError in concrete
    plain = [
        f"{c.__module__}.{c.__qualname__}"
        for c in concrete
        if not any(
            b.__module__ == "builtins" and b not in (Exception, BaseException, object)
            for b in c.__mro__
        )
    ]
    assert not plain, f"errors with no builtin base: {plain}"


def test_argparse_adapters_report_through_argparse():
    convert = validation.float_type(0, 1)
    assert convert("0.25") == 0.25
    for text, message in [("nan", "finite"), ("abc", "must be a number"), ("2", r"\[0, 1\]")]:
        with pytest.raises(argparse.ArgumentTypeError, match=message):
            convert(text)
    with pytest.raises(argparse.ArgumentTypeError, match="whole number"):
        validation.int_type(0)("1.5")
    with pytest.raises(argparse.ArgumentTypeError, match=r"in \[0, 9\]"):
        validation.int_type(0, 9)("10")


# -- options refused in one line, before the model loads --------------------------------------
def _verb_args(verb: str, model_dir: Path, images: Path, tmp_path: Path) -> list[str]:
    common = ["--model", str(model_dir)]
    if verb == "predict":
        return ["predict", str(images), "--class-name", "x", "--out", str(tmp_path / "o"), *common]
    if verb == "eval":
        return ["eval", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "o"), *common]
    return ["train", "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "o"), *common]


BAD_OPTIONS = [  # (verb, extra arguments, words the one line must hold)
    ("predict", ["--threshold", "nan"], ["--threshold", "finite"]),
    ("predict", ["--threshold", "1.5"], ["--threshold", "[0, 1]"]),
    ("predict", ["--threshold", "-0.1"], ["--threshold", "[0, 1]"]),
    ("predict", ["--image-threshold", "2.5"], ["--image-threshold", "[0, 2]"]),
    ("predict", ["--image-threshold", "inf"], ["--image-threshold", "finite"]),
    ("predict", ["--sigma", "inf"], ["--sigma", "finite"]),
    ("predict", ["--sigma", "-1"], ["--sigma", ">= 0"]),
    ("predict", ["--batch-size", "0"], ["--batch-size", "1 or more"]),
    ("predict", ["--image-size", "72"], ["--image-size", "multiple of 14", "70 or 84"]),
    ("eval", ["--image-size", "72"], ["--image-size", "multiple of 14", "70 or 84"]),
    ("train", ["--image-size", "72"], ["--image-size", "multiple of 14", "70 or 84"]),
    ("eval", ["--workers", "-1"], ["--workers", "0 or more"]),
    ("eval", ["--sigma", "nan"], ["--sigma", "finite"]),
    ("eval", ["--batch-size", "two"], ["--batch-size", "whole number"]),
    ("train", ["--lr", "0"], ["--lr", "> 0"]),
    ("train", ["--lr", "nan"], ["--lr", "finite"]),
    ("train", ["--betas", "0.5", "1.0"], ["--betas", "[0, 1)"]),
    ("train", ["--seed", "-3"], ["--seed", "whole number"]),
    ("train", ["--sigma", "inf"], ["--sigma", "finite"]),
    ("eval", ["--model", "l15h"], ["unknown TIPS preset 'l15h'", "l14h"]),
    ("train", ["--model", "l15h"], ["unknown TIPS preset 'l15h'"]),
    ("predict", ["--model", "l15h"], ["unknown TIPS preset 'l15h'"]),
]


@pytest.mark.parametrize(
    "verb,extra,words", BAD_OPTIONS, ids=[f"{v}{''.join(e)}" for v, e, _ in BAD_OPTIONS]
)
def test_bad_options_are_one_line_and_exit_1(
    verb, extra, words, model_dir, images, tmp_path, capsys
):
    rc, err = run([*_verb_args(verb, model_dir, images, tmp_path), *extra], capsys)
    line = one_line_error(err)
    assert rc == 1
    for word in words:
        assert word in line, line
    assert not (tmp_path / "o").exists()  # refused before any output (or model) was made


def _tile_argv(verb: str, model_dir: Path, images: Path, tmp_path: Path) -> list[str]:
    """The verbs that take --tile, with what they need besides it."""
    out = str(tmp_path / "o")
    given = {
        "predict": [str(images), "--class-name", "x", "--out", out],
        "fit": [str(images), "--class-name", "x", "--out", out],
        "export": ["--class-name", "x", "--out", out],
        "eval": ["--data", str(tmp_path / "no-data"), "--out", out],
        "serve": ["--port", "0"],
    }[verb]
    return [verb, *given, "--model", str(model_dir)]


@pytest.mark.parametrize("verb", ["predict", "fit", "serve", "export", "eval"])
def test_a_tile_smaller_than_a_patch_is_refused_before_the_model_loads(
    verb, model_dir, description, images, tmp_path, capsys
):
    patch = description["vision"]["patch_size"]
    argv = _tile_argv(verb, model_dir, images, tmp_path)
    rc, err = run([*argv, "--tile", str(patch - 1)], capsys)
    line = one_line_error(err)
    assert rc == 1, line
    assert f"--tile must be at least {patch} (the model's patch size)" in line, line
    assert f"got {patch - 1}" in line
    assert not (tmp_path / "o").exists()
    # one patch is enough: the run goes on (and stops at the weights this model folder lacks)
    rc, err = run([*argv, "--tile", str(patch)], capsys)
    assert rc != 0 and "--tile" not in err


@pytest.mark.parametrize("verb", ["predict", "eval", "train"])
def test_cuda_on_a_machine_without_cuda(verb, model_dir, images, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    argv = [*_verb_args(verb, model_dir, images, tmp_path), "--device", "cuda"]
    rc, err = run(argv, capsys)
    line = one_line_error(err)
    assert rc == 1 and "--device cuda" in line and "no CUDA" in line and "use cpu" in line


def test_usage_errors_exit_1_not_2(capsys):
    """argparse's own status 2 would mean "no input images found" (README)."""
    rc, err = run(["predict", "x.png"], capsys)  # --class-name missing
    assert rc == 1 and "--class-name" in one_line_error(err)


def test_eval_records_the_resolved_device(model_dir, tmp_path, capsys, monkeypatch):
    """`--device auto` reaches the runner (and results.json) as the device actually used."""
    import tipsomaly.runners.evaluate as evaluate_module

    seen = {}

    def fake_evaluate(data, settings, out, **options):
        seen["device"], seen["dtype"] = settings.device, settings.dtype
        raise KeyboardInterrupt  # stop here: nothing else to run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(evaluate_module, "evaluate_datasets", fake_evaluate)
    argv = ["eval", "--data", str(tmp_path), "--model", str(model_dir), "--out", str(tmp_path)]
    assert main([*argv, "--device", "auto", "--dtype", "auto"]) == 130
    assert seen["device"] == "cpu" and seen["dtype"] in ("fp32", "bf16")


# -- model.json against its schema ------------------------------------------------------------
SCHEMA_CASES = [  # (tower, key, value, words of the message)
    ("vision", "depth", "12", ["vision.depth", "whole number", "'12'"]),
    ("vision", "num_heads", 0, ["vision.num_heads", "positive"]),
    ("vision", "patch_size", 0, ["vision.patch_size", "positive"]),
    ("vision", "embed_dim", 2.5, ["vision.embed_dim", "whole number"]),
    ("vision", "mlp_ratio", "4", ["vision.mlp_ratio", "number"]),
    ("vision", "mlp_ratio", -1.0, ["vision.mlp_ratio", "> 0"]),
    ("vision", "layer_scale", "yes", ["vision.layer_scale", "true or false"]),
    ("vision", "num_register_tokens", 0, ["vision.num_register_tokens"]),
    ("vision", "pos_embed_image_size", None, ["vision.pos_embed_image_size"]),
    ("vision", "npz", 3, ["vision.npz"]),
    ("vision", "num_head", 4, ["unknown key", "'num_head'", "num_heads"]),
    ("text", "num_heads", 0, ["text.num_heads", "positive"]),
    ("text", "vocab_size", -1, ["text.vocab_size"]),
    ("text", "max_len", True, ["text.max_len", "whole number"]),
    ("text", "hidden_size", [64], ["text.hidden_size"]),
]


@pytest.mark.parametrize(
    "tower,key,value,words", SCHEMA_CASES, ids=[f"{t}.{k}={v!r}" for t, k, v, _ in SCHEMA_CASES]
)
def test_model_json_schema_names_the_file_and_the_field(
    tower, key, value, words, description, tmp_path
):
    bad = json.loads(json.dumps(description))
    bad[tower][key] = value
    path = tmp_path / "model.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError) as info:
        read_model_json(path)
    message = str(info.value)
    assert str(path) in message, message
    for word in words:
        assert word in message, message


# (change to a valid description, words of the error given the unchanged description); the
# values are derived from the description, so that the rule is broken whatever its sizes.
CROSS_FIELD_CASES = [
    (
        lambda d: d["vision"].update(num_heads=d["vision"]["embed_dim"] + 1),
        lambda d: [
            f"vision.embed_dim ({d['vision']['embed_dim']})",
            f"num_heads ({d['vision']['embed_dim'] + 1})",
        ],
    ),
    (
        lambda d: d["text"].update(num_heads=d["text"]["hidden_size"] + 1),
        lambda d: [
            f"text.hidden_size ({d['text']['hidden_size']})",
            f"num_heads ({d['text']['hidden_size'] + 1})",
        ],
    ),
    (
        lambda d: d["vision"].update(pos_embed_image_size=d["vision"]["pos_embed_image_size"] + 1),
        lambda d: ["multiple of patch_size"],
    ),
    (
        lambda d: d["text"].update(hidden_size=2 * d["text"]["hidden_size"]),
        lambda d: ["vision.embed_dim", "text.hidden_size"],
    ),
    (lambda d: d.update(temperature="hot"), lambda d: ["temperature", "number"]),
    (lambda d: d.update(temperature=0), lambda d: ["temperature", "> 0"]),
    (lambda d: d.update(vision=[1, 2]), lambda d: ["vision", "expected an object"]),
    (lambda d: d["vision"].pop("depth"), lambda d: ["missing key", "'depth'"]),
]


@pytest.mark.parametrize(
    "change,words",
    CROSS_FIELD_CASES,
    ids=[
        "vision-heads",
        "text-heads",
        "pos-embed-size",
        "tower-widths",
        "temperature-type",
        "temperature-zero",
        "vision-not-object",
        "missing-depth",
    ],
)
def test_model_json_cross_field_rules(change, words, description, tmp_path):
    bad = json.loads(json.dumps(description))
    change(bad)
    path = tmp_path / "model.json"
    path.write_text(json.dumps(bad))
    with pytest.raises(ConfigError) as info:
        read_model_json(path)
    assert str(path) in str(info.value)
    for word in words(description):
        assert word in str(info.value)


def test_golden_descriptions_pass_the_schema(golden):
    vision, text, _ = read_model_json(golden.dir / "golden.json")  # descriptive keys allowed
    assert vision.patch_size == golden.config["vision"]["patch_size"]
    assert text.hidden_size == vision.embed_dim == golden.config["vision"]["embed_dim"]


def test_a_broken_model_json_is_one_line_from_the_cli(model_dir, images, tmp_path, capsys):
    """A zero head count used to end in ZeroDivisionError, a string depth in TypeError."""
    data = json.loads((model_dir / "model.json").read_text())
    data["vision"]["num_heads"] = 0
    (model_dir / "model.json").write_text(json.dumps(data))
    rc, err = run(_verb_args("predict", model_dir, images, tmp_path), capsys)
    line = one_line_error(err)
    assert rc == 1 and "model.json" in line and "vision.num_heads" in line


# -- errors: user errors one line, bugs with their traceback ----------------------------------
def test_a_bugs_keyerror_keeps_its_traceback(monkeypatch):
    """main() used to show any KeyError as a user error; unknown presets now have their own."""

    def buggy(args):
        raise KeyError("a bug")

    monkeypatch.setattr("tipsomaly.cli.weights.cmd_path", buggy)
    with pytest.raises(KeyError, match="a bug"):
        main(["weights", "path", "l14h"])


def test_out_under_a_file_is_one_line_before_the_model(model_dir, images, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    args = _verb_args("predict", model_dir, images, tmp_path)
    args[args.index("--out") + 1] = str(tmp_path / "file" / "out")
    rc, err = run(args, capsys)
    line = one_line_error(err)
    assert rc == 1 and line.startswith(f"tipsomaly: error: cannot write {tmp_path / 'file'}")


@pytest.mark.parametrize("verb", ["predict", "eval", "train"])
def test_read_only_out_is_one_line(verb, model_dir, images, tmp_path, capsys, monkeypatch):
    """A read-only file system (as root, chmod does not stop writes: simulate EROFS)."""
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    rc, err = run(_verb_args(verb, model_dir, images, tmp_path), capsys)
    line = one_line_error(err)
    assert rc == 1 and f"cannot write {tmp_path / 'o'}: Read-only file system" in line


def test_full_disk_while_writing_meta_is_one_line(tmp_path, capsys, monkeypatch):
    import tipsomaly.data.layouts as layouts
    import tipsomaly.data.meta as meta

    def full(root, data, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(Path(root) / "meta.json"))

    monkeypatch.setattr(layouts, "build_meta", lambda root, layout, classes=None: {})
    monkeypatch.setattr(meta, "write_meta", full)
    rc, err = run(["data", "meta", str(tmp_path), "--layout", "folder"], capsys)
    line = one_line_error(err)
    assert rc == 1
    assert (
        line == f"tipsomaly: error: cannot write {tmp_path / 'meta.json'}: No space left on device"
    )


# -- -v / -vv ---------------------------------------------------------------------------------
def _debug(name: str) -> bool:
    return logging.getLogger(name).isEnabledFor(logging.DEBUG)


def test_verbosity_levels(restore_logging, capsys):
    main(["weights", "path", "l14h"])
    assert not _debug("tipsomaly.tips.weights") and not _debug("urllib3")
    assert logging.getLogger("tipsomaly.tips.weights").isEnabledFor(logging.INFO)
    main(["weights", "path", "l14h", "-v"])
    assert _debug("tipsomaly.tips.weights")  # -v: our debug messages
    assert not _debug("urllib3") and not _debug("PIL.PngImagePlugin")
    main(["weights", "path", "l14h", "-vv"])
    assert _debug("tipsomaly.runners.predict") and _debug("urllib3") and _debug("some.library")
    assert not _debug("PIL.PngImagePlugin") and not _debug("PIL.Image")  # never PIL's chatter
    main(["weights", "path", "l14h", "-q"])
    assert not logging.getLogger("tipsomaly.tips").isEnabledFor(logging.INFO)


# -- help screens -----------------------------------------------------------------------------
def _verb_parsers(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _verb_parsers(sub, f"{prefix} {name}".strip())
    if prefix:
        yield prefix, parser


def test_every_option_has_help_and_shows_its_default():
    verbs = dict(_verb_parsers(build_parser()))
    assert {"predict", "eval", "train", "data meta", "weights list", "weights path"} <= set(verbs)
    for verb, parser in verbs.items():
        formatter = parser._get_formatter()
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            where = f"{verb} {'/'.join(action.option_strings) or action.dest}"
            assert action.help and action.help.strip(), f"{where} has no help"
            if action.option_strings and action.default not in (None, False):
                shown = formatter._expand_help(action)
                assert "default" in shown.lower(), f"{where}: default not shown: {shown}"
                if isinstance(action.default, (int, float, str)) and action.default != "":
                    value = action.default
                    texts = {str(value), f"{value:g}"} if isinstance(value, float) else {str(value)}
                    assert any(t in shown for t in texts), f"{where}: {value} not in {shown}"
        assert parser.format_help().startswith("usage: ")  # renders: no stray % in a help


def test_eval_batch_size_help_says_its_default(capsys):
    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--batch-size BATCH_SIZE images per forward pass (default: 8)" in text
