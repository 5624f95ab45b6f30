"""Int8 exports on the tiny model: both engines quantize, record their parity with fp32 and
recalibrate a profile's thresholds with their own scores; an fp32 threshold is never applied
to int8 scores (nor the reverse); ``--engine`` exports once and reuses the cached graph.

Tolerances (tiny model, 70 px, 6 calibration images): max |int8 − fp32| on maps and scores
measured ~2e-4 on both engines; tested <= 0.02. The recalibrated LOO scores move by about
as much from the profile's fp32 ones.
"""

from __future__ import annotations

import csv
import json
import logging
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from synthetic import tiny_model_dir
from tipsomaly.cli import main as main_module
from tipsomaly.cli.main import main
from tipsomaly.deploy import export as export_module
from tipsomaly.deploy import quantize as quantize_module
from tipsomaly.deploy.inferencers import ExportedDetector
from tipsomaly.deploy.quantize import openvino_fp32_ops, spearman
from tipsomaly.errors import SetupMismatchError
from tipsomaly.fingerprint import digest, file_digest
from tipsomaly.identity import Identity, calibration_diff
from tipsomaly.method.calibration import conformal_threshold

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")
pytest.importorskip("openvino")
pytest.importorskip("nncf")

SIZE = "70"
CLASS = "tile"
TOLERANCE = 0.02
FORMATS = {"openvino": "openvino", "onnxruntime": "onnx"}


@pytest.fixture(autouse=True)
def restore_logging():
    """main() configures logger levels; put them back so other tests see the defaults."""
    names = ["", "tipsomaly", *main_module.THIRD_PARTY, *main_module.ALWAYS_QUIET]
    levels = {n: logging.getLogger(n).level for n in names}
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)


def _images(folder: Path, n: int, seed: int, defect: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        base = rng.random((16, 16))
        img = np.kron(base, np.ones((6, 6)))[:90, :90] * 0.6 + 0.4 * rng.random((90, 90))
        rgb = (np.stack([img, img * 0.95, img * 0.85], -1) * 255).astype(np.uint8)
        if defect:
            rgb[20:40, 30:50] = 10
        Image.fromarray(rgb).save(folder / f"img_{i}.png")
    return folder


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("int8")
    model = tiny_model_dir(root / "model")
    refs = _images(root / "refs", 6, seed=1)
    profile = root / "profile"
    assert main(["fit", str(refs), "--class-name", CLASS, "--model", str(model), "--image-size",
                 SIZE, "--false-alarm-rate", "0.2", "--out", str(profile), "-q"]) == 0  # fmt: skip
    out = {"root": root, "model": model, "refs": refs, "profile": profile}
    for engine, fmt in FORMATS.items():
        out[engine] = root / f"int8-{engine}"
        assert main(["export", "--profile", str(profile), "--format", fmt, "--precision", "int8",
                     "--out", str(out[engine]), "-q"]) == 0  # fmt: skip
    out["fp32"] = root / "fp32"
    assert main(["export", "--profile", str(profile), "--format", "openvino",
                 "--out", str(out["fp32"]), "-q"]) == 0  # fmt: skip
    return out


def _record(folder: Path) -> dict:
    return json.loads((folder / "export.json").read_text())


@pytest.mark.parametrize("engine", list(FORMATS))
def test_int8_export_is_quantized_and_records_its_parity_with_fp32(setup, engine):
    record = _record(setup[engine])
    assert record["graph"]["precision"] == "int8"
    assert record["identity"]["engine"] == engine and record["identity"]["precision"] == "int8"
    graph = setup[engine] / record["graph"]["file"]
    if engine == "onnxruntime":
        import onnx

        ops = [n.op_type for n in onnx.load(str(graph)).graph.node]
        assert ops.count("QuantizeLinear") >= 8  # the 4 linears of each of the 2 blocks
    else:
        import openvino as ov

        model = ov.Core().read_model(str(graph))
        fed = [
            target.get_node().get_type_name()
            for op in model.get_ops()
            if op.get_type_name() == "FakeQuantize"
            for target in op.output(0).get_target_inputs()
        ]
        # the blocks only (their linears and attention), never the patch embedding's pixels
        assert fed.count("MatMul") == 8, fed  # the 4 linears of each of the 2 blocks
        assert "Convolution" not in fed, fed
    parity = record["parity"]
    refs = sorted(setup["refs"].iterdir())
    assert parity["images"] == len(refs)
    assert 0 < parity["map_max_error"] <= TOLERANCE  # quantized: not bit-equal, but close
    assert parity["image_score_spearman"] >= 0.9
    calibration = record["quantization"]["calibration"]
    assert calibration["digest"] == digest(sorted(file_digest(f) for f in refs))
    assert "final LayerNorm" in record["quantization"]["fp32"]


@pytest.mark.parametrize("engine", list(FORMATS))
def test_a_profile_is_recalibrated_with_the_int8_engine_itself(setup, engine):
    record = _record(setup[engine])
    profile = json.loads((setup["profile"] / "profile.json").read_text())
    mode = record["mode"]
    fp32 = profile["thresholds"][mode]["image"]
    th = record["thresholds"]
    assert th["calibrated_with"] == {"engine": engine, "precision": "int8"}
    scores = th["calibration"]["scores"]
    assert len(scores) == th["calibration"]["references"] == 6
    # the threshold is the conformal quantile of the int8 engine's leave-one-out scores
    again = conformal_threshold(np.asarray(scores), fp32["false_alarm_rate"])
    assert th["image"]["threshold"] == again.threshold
    assert th["image"]["n"] == fp32["n"] and th["image"]["k"] == fp32["k"]
    # ... which are the int8 engine's: near the fp32 fit's, not equal to them
    assert th["image"]["threshold"] != fp32["threshold"]
    assert abs(th["image"]["threshold"] - fp32["threshold"]) < TOLERANCE
    assert th["pixel"]["threshold"] != profile["thresholds"][mode]["pixel"]["threshold"]


def test_an_int8_engine_decides_with_its_own_threshold_never_the_fp32_one(setup, tmp_path):
    """Fails if the profile's fp32 threshold were applied to the int8 scores."""
    folder = setup["openvino"]
    profile = json.loads((setup["profile"] / "profile.json").read_text())
    record = _record(folder)
    int8_t = record["thresholds"]["image"]["threshold"]
    fp32_t = profile["thresholds"][record["mode"]]["image"]["threshold"]
    assert int8_t != fp32_t
    detector = ExportedDetector(folder)
    assert detector.identity.precision == "int8"
    assert detector.thresholds_for(CLASS).get(record["mode"], "image").threshold == int8_t
    [p] = detector.predict([str(sorted(setup["refs"].iterdir())[0])])
    assert p.threshold == int8_t
    assert p.is_anomalous == (p.image_score >= int8_t)

    # the fp32 thresholds put into the int8 export: refused in one line, naming the precision
    swapped = tmp_path / "swapped"
    shutil.copytree(folder, swapped)
    record["thresholds"]["image"] = profile["thresholds"][record["mode"]]["image"]
    record["thresholds"]["calibrated_with"] = {"engine": "torch", "precision": "fp32"}
    (swapped / "export.json").write_text(json.dumps(record))
    with pytest.raises(SetupMismatchError, match=r"precision fp32 \(this run: int8\)") as e:
        ExportedDetector(swapped).thresholds_for(CLASS)
    assert "\n" not in str(e.value)


def test_int8_thresholds_are_refused_for_an_fp32_engine(setup, tmp_path):
    swapped = tmp_path / "swapped"
    shutil.copytree(setup["fp32"], swapped)
    record = _record(swapped)
    assert record["thresholds"]["calibrated_with"]["precision"] in ("fp32", "bf16")
    record["thresholds"]["calibrated_with"] = {"engine": "openvino", "precision": "int8"}
    (swapped / "export.json").write_text(json.dumps(record))
    with pytest.raises(SetupMismatchError, match=r"precision int8 \(this run: fp32\)"):
        ExportedDetector(swapped).thresholds_for(CLASS)


def test_calibration_diff_separates_int8_from_float_scores():
    ident = Identity(model={}, image_size=70, prompts={}, pixel_prompts=None, sigma=4, cls="cls1")
    assert calibration_diff({"engine": "torch", "precision": "bf16"}, ident) == []
    assert calibration_diff(None, ident) == []
    int8 = Identity(**{**ident.__dict__, "engine": "openvino", "precision": "int8"})
    assert calibration_diff({"engine": "openvino", "precision": "int8"}, int8) == []
    assert calibration_diff(None, int8)  # a torch fp32 fit for an int8 engine
    assert calibration_diff({"engine": "onnxruntime", "precision": "int8"}, int8) == [
        "engine onnxruntime (this run: openvino)"
    ]


def test_openvino_ops_split_from_an_fp32_onnx_node_stay_fp32():
    ops = ["node_conv2d/WithoutBiases", "node_conv2d", "node_MatMul_40", "node_add/x", "other"]
    kept = openvino_fp32_ops(["node_conv2d", "node_add"], ops)
    assert kept == ["node_conv2d/WithoutBiases", "node_conv2d", "node_add/x"]


def test_spearman_ranks_with_ties():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)
    assert spearman([1, 2], [1, 2]) is None


# -- engines without an export step -------------------------------------------------------------
@pytest.fixture
def counted(monkeypatch, tmp_path):
    """TIPSOMALY_HOME in tmp_path, and the exports made (each call's output folder)."""
    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path / "home"))
    made: list[Path] = []
    real = export_module.export

    def spy(detector, class_name, out_dir, *args, **kwargs):
        made.append(Path(out_dir))
        return real(detector, class_name, out_dir, *args, **kwargs)

    monkeypatch.setattr(export_module, "export", spy)
    return made


def _scores(out: Path) -> list[float]:
    with (out / "scores.csv").open(newline="") as f:
        return [float(r["image_score"]) for r in csv.DictReader(f)]


def test_predict_with_an_int8_engine_exports_once_then_uses_the_cache(
    setup, counted, tmp_path, monkeypatch
):
    images = _images(tmp_path / "images", 3, seed=5)
    common = ["predict", str(images), "--class-name", CLASS, "--model", str(setup["model"]),
              "--image-size", SIZE, "--engine", "openvino", "--precision", "int8",
              "--calibration-images", str(setup["refs"]), "--no-overlays", "-q"]  # fmt: skip
    assert main([*common, "--out", str(tmp_path / "a")]) == 0
    assert len(counted) == 1
    assert main([*common, "--out", str(tmp_path / "b")]) == 0
    assert len(counted) == 1  # the second run found the cached graph
    assert _scores(tmp_path / "a") == _scores(tmp_path / "b")
    report = json.loads((tmp_path / "b" / "scores.json").read_text())
    identity = report["settings"]["identity"]
    assert (identity["engine"], identity["precision"]) == ("openvino", "int8")
    # another precision is another engine
    assert main([*common[:-6], "--no-overlays", "-q", "--out", str(tmp_path / "c")]) == 0
    assert len(counted) == 2
    cached = sorted((tmp_path / "home" / "engines").glob("*/export.json"))
    assert len(cached) == 2
    # a new quantization recipe makes the int8 graph again, never reusing the old one
    monkeypatch.setattr(quantize_module, "RECIPE", quantize_module.RECIPE + 1)
    assert main([*common, "--out", str(tmp_path / "d")]) == 0
    assert len(counted) == 3
    records = [json.loads(f.read_text()) for f in (tmp_path / "home" / "engines").glob("*/e*.json")]
    recipes = sorted(r["quantization"]["recipe"] for r in records if "quantization" in r)
    assert recipes == [quantize_module.RECIPE - 1, quantize_module.RECIPE]


def test_two_processes_export_an_engine_once(setup, counted, tmp_path):
    from tipsomaly.method.config import DetectorConfig
    from tipsomaly.runners.engines import open_engine

    config = DetectorConfig(model=str(setup["model"]), image_size=70, engine="onnxruntime",
                            precision="fp32", device="cpu", dtype="fp32")  # fmt: skip
    engines, errors = [], []

    def run() -> None:
        try:
            engines.append(open_engine(config, {}, CLASS))
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(engines) == 2
    assert len(counted) == 1
    assert engines[0].folder == engines[1].folder


def _one_line(capsys, argv: list[str]) -> str:
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 1 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_engine_refusals_are_one_line(setup, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path / "home"))
    base = ["predict", str(setup["refs"]), "--class-name", CLASS, "--model", str(setup["model"]),
            "--image-size", SIZE, "--out", str(tmp_path / "out")]  # fmt: skip
    line = _one_line(capsys, [*base, "--engine", "openvino", "--precision", "int8"])
    assert "--calibration-images" in line and "--profile" in line
    assert "torch has no int8" in _one_line(capsys, [*base, "--precision", "int8"])
    assert "bf16" in _one_line(capsys, [*base, "--engine", "onnxruntime", "--precision", "bf16"])
    from tipsomaly.tips import runtime

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    line = _one_line(capsys, [*base, "--engine", "openvino", "--precision", "bf16"])
    assert "bf16" in line
    export = ["export", "--model", str(setup["model"]), "--image-size", SIZE, "--class-name",
              CLASS, "--out", str(tmp_path / "exp")]  # fmt: skip
    assert "--calibration-images" in _one_line(capsys, [*export, "--precision", "int8"])
    assert "fp32 or int8" in _one_line(capsys, [*export, "--precision", "bf16"])


def _moved_profile(setup, tmp_path, keep_copies: bool):
    """The setup's profile copied to ``tmp_path``, its reference files gone from where it was
    fitted (and, unless ``keep_copies``, its own copies of them too)."""
    profile = tmp_path / "profile"
    shutil.copytree(setup["profile"], profile)
    if not keep_copies:
        shutil.rmtree(profile / "references")
    record = json.loads((profile / "profile.json").read_text())
    gone = [str(tmp_path / f"gone-{i}.png") for i in range(len(record["references"]["sources"]))]
    record["references"]["sources"] = gone
    (profile / "profile.json").write_text(json.dumps(record))
    return profile


def test_int8_on_a_profile_without_its_references_says_so(setup, capsys, tmp_path):
    profile = _moved_profile(setup, tmp_path, keep_copies=False)
    line = _one_line(capsys, ["export", "--profile", str(profile), "--precision", "int8",
                              "--out", str(tmp_path / "exp")])  # fmt: skip
    assert "gone-0.png" in line and "--calibration-images" in line


def test_int8_calibrates_on_the_copies_a_moved_profile_keeps(setup, tmp_path):
    from tipsomaly.deploy.export import reference_files
    from tipsomaly.method.profile import Profile

    profile = _moved_profile(setup, tmp_path, keep_copies=True)
    files = reference_files(Profile.load(profile))
    fitted = json.loads((setup["profile"] / "profile.json").read_text())["references"]
    assert len(files) == len(fitted["sources"])
    for file, sha in zip(files, fitted["sha256"], strict=True):
        assert Path(file).parent == profile / "references" and Path(file).stem == sha


# -- the promise: the int8 engine's false-alarm rate at its own threshold -----------------------
def _texture(rng: np.random.Generator, size: int = 42) -> np.ndarray:
    """A normal texture: 6-px blocks of random grey plus pixel noise, tinted (uint8 RGB)."""
    blocks = rng.random((size // 6 + 1, size // 6 + 1))
    grey = np.kron(blocks, np.ones((6, 6)))[:size, :size] * 0.6 + 0.4 * rng.random((size, size))
    return (np.stack([grey, grey * 0.95, grey * 0.85], -1) * 255).astype(np.uint8)


@pytest.mark.parametrize("engine", list(FORMATS))
def test_int8_keeps_the_false_alarm_rate_at_its_recalibrated_threshold(engine, tmp_path):
    """As tests/method/test_profile_calibration for torch: 39 references at rate 0.1, the
    rate on 1000 fresh normal images below the 99.9 % quantile of Beta(n+1-k, k) plus 3.3
    binomial standard deviations."""
    from scipy.stats import beta

    from goldens import golden_dirs
    from tipsomaly.deploy.export import export
    from tipsomaly.method.calibration import conformal_rank
    from tipsomaly.method.detector import Detector
    from tipsomaly.method.fitting import fit_profile
    from tipsomaly.tips.model import load_model_dir

    n, alpha, m = 39, 0.1, 1000
    rng = np.random.default_rng(7)
    refs = []
    for i in range(n):
        refs.append(str(tmp_path / f"ref_{i:02d}.png"))
        Image.fromarray(_texture(rng)).save(refs[-1])
    model = load_model_dir(golden_dirs()[0], description="golden.json")
    detector = Detector(model, image_size=42, text_cache=False, batch_size=64)
    profile = fit_profile(detector, refs, CLASS, false_alarm_rate=alpha)
    detector.set_profiles(profile, "fused")
    folder = tmp_path / "int8"
    export(detector, CLASS, folder, FORMATS[engine], precision="int8", calibration=refs)
    int8 = ExportedDetector(folder, batch_size=250)
    calib = int8.thresholds_for(CLASS).get("fused", "image")
    assert calib.threshold != profile.thresholds.get("fused", "image").threshold
    fresh_rng = np.random.default_rng(2024)
    preds = int8.predict([_texture(fresh_rng) for _ in range(m)], CLASS)
    assert all(p.threshold == calib.threshold for p in preds)
    rate = float(np.mean([p.is_anomalous for p in preds]))
    k = conformal_rank(n, alpha)
    upper = float(beta.ppf(0.999, n + 1 - k, k))
    bound = upper + 3.3 * (upper * (1 - upper) / m) ** 0.5
    assert 0.25 < bound < 0.36
    assert rate <= bound, f"{rate:.3f} of new normal images flagged by the int8 engine"
    assert rate > 0.0  # the threshold is not vacuous
    print(f"{engine} int8: false-alarm rate {rate:.3f} at alpha {alpha} (bound {bound:.3f})")
