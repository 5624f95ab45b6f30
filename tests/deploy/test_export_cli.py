"""``tipsomaly export`` then ``tipsomaly predict --model EXPORT_DIR``: the outputs of
``predict`` with the PyTorch model, within 1e-5 on every score and map value."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic import tiny_model_dir
from tipsomaly.cli.main import main

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

SIZE = "70"
CLASS = "tile"
ATOL = 1e-5


def _images(folder: Path, n: int, seed: int, shape=(80, 100)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        img = (rng.random((*shape, 3)) * 200 + 30).astype(np.uint8)
        Image.fromarray(img).save(folder / f"img_{i}.png")
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-cli")
    model = tiny_model_dir(root / "model")
    refs = _images(root / "refs", 4, seed=1)
    images = _images(root / "images", 3, seed=2, shape=(60, 90))
    profile = root / "profile"
    assert main(["fit", str(refs), "--class-name", CLASS, "--model", str(model), "--image-size",
                 SIZE, "--out", str(profile), "-q"]) == 0  # fmt: skip
    exports = {}
    for kind, extra in (("zero-shot", ["--model", str(model), "--image-size", SIZE,
                                       "--class-name", CLASS]),
                        ("fused", ["--profile", str(profile)])):  # fmt: skip
        exports[kind] = root / f"export-{kind}"
        assert main(["export", *extra, "--out", str(exports[kind]), "-q"]) == 0
    return {"root": root, "model": model, "images": images, "profile": profile, **exports}


def _rows(out: Path) -> list[dict[str, str]]:
    with (out / "scores.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("kind", ["zero-shot", "fused"])
def test_predict_with_an_export_writes_what_predict_with_the_model_writes(setup, kind, capsys):
    root, images = setup["root"], setup["images"]
    torch_out, export_out = root / f"torch-{kind}", root / f"onnx-{kind}"
    model = ["--model", str(setup["model"]), "--image-size", SIZE, "--dtype", "fp32"]
    if kind == "fused":
        model = ["--profile", str(setup["profile"]), "--dtype", "fp32"]
    common = [str(images), "--class-name", CLASS, "--save-maps", "-q"]
    assert main(["predict", *common, *model, "--out", str(torch_out)]) == 0
    assert main(["predict", *common, "--model", str(setup[kind]), "--out", str(export_out)]) == 0
    listed = capsys.readouterr().out.splitlines()[-1]  # "outputs in DIR/: ..." of the export's run
    assert listed.startswith(f"outputs in {export_out}")
    assert ("masks/" in listed) == (kind == "fused")
    expected, got = _rows(torch_out), _rows(export_out)
    assert [r.keys() for r in got] == [r.keys() for r in expected]
    for g, e in zip(got, expected, strict=True):
        for key in e:
            if key in ("image_score", "score_cls1", "score_cls2"):
                assert abs(float(g[key]) - float(e[key])) <= ATOL, key
            elif key != "threshold" or e[key]:
                assert g[key] == e[key], key  # path, name, status, is_anomalous, mode, ...
    for name in ("img_0", "img_1", "img_2"):
        a = np.load(export_out / "maps" / f"{name}.npy")
        b = np.load(torch_out / "maps" / f"{name}.npy")
        assert a.shape == b.shape == (60, 90) and np.abs(a - b).max() <= ATOL
        assert (export_out / "overlays" / f"{name}.png").is_file()
        assert (export_out / "masks" / f"{name}.png").is_file() == (kind == "fused")
    settings = json.loads((export_out / "scores.json").read_text())["settings"]
    assert settings["image_size"] == 70 and settings["mode"] == kind
    torch_settings = json.loads((torch_out / "scores.json").read_text())["settings"]
    assert settings["overlay_scale"] == torch_settings["overlay_scale"]
    assert settings["dtype"] == "fp32" and settings["device"] == "cpu"
    assert settings["engine"] == "onnxruntime" and torch_settings["engine"] == "torch"


def _fails(capsys, argv: list[str], *needles: str) -> None:
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("tipsomaly: error: "), err
    for needle in needles:
        assert needle in err, err


def test_predict_refuses_options_the_export_contradicts(setup, capsys):
    exp, images, out = str(setup["fused"]), str(setup["images"]), str(setup["root"] / "no")
    base = ["predict", images, "--model", exp, "--out", out]
    _fails(
        capsys, [*base, "--class-name", "screw"], "for class 'tile', not", "--class-name 'screw'"
    )
    _fails(capsys, [*base, "--class-from-folder"], "an export is of one class")
    _fails(
        capsys, [*base, "--class-name", CLASS, "--image-size", "84"], "image_size 70 (this run: 84)"
    )
    _fails(capsys, [*base, "--class-name", CLASS, "--mode", "few-shot"], "mode fused")
    _fails(capsys, [*base, "--class-name", CLASS, "--profile", str(setup["profile"])], "--profile")
    _fails(capsys, [*base, "--class-name", CLASS, "--dtype", "bf16"], "runs in fp32")
    _fails(capsys, [*base, "--class-name", CLASS, "--pixel-prompts", "trained-on-visa"], "none")
    assert main([*base, "--class-name", CLASS, "--image-size", SIZE, "--mode", "fused", "-q"]) == 0


def test_export_refuses_bad_options(setup, capsys):
    model, out = str(setup["model"]), str(setup["root"] / "bad-export")
    base = ["export", "--model", model, "--image-size", SIZE, "--out", out]
    _fails(capsys, base, "give --class-name")
    _fails(capsys, [*base, "--class-name", CLASS, "--mode", "fused"], "--mode needs --profile")
    _fails(capsys, [*base, "--class-name", CLASS, "--image-size", "71"], "--image-size")
    _fails(
        capsys,
        ["export", "--profile", str(setup["profile"]), "--class-name", "screw", "--out", out],
        "profile of 'tile', not 'screw'",
    )
    _fails(
        capsys,
        ["export", "--profile", str(setup["profile"]), "--image-size", "84", "--out", out],
        "image_size",
    )
    assert not Path(out, "export.json").exists()
