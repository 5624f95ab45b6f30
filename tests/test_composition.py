"""Every capability composes with every other (issue 19): one set of images through every cell of

    {predict CLI, Detector in Python, serve over HTTP, exported ONNX, exported OpenVINO,
     torchrun with 2 processes}
  × {zero-shot, fused profile} × {untiled, tiled} × {no ROI, ROI}

checked against the ``predict`` CLI: scores, decisions, maps at the original size and defect
records bit-identical for the PyTorch paths, within 1e-5 for the exported engines (a pixel may
then fall on the other side of the pixel threshold only where the map is within 1e-5 of it).
No cell is refused. A tiled profile is fitted with ``--tile``, and every path takes its tiling
from the profile; the zero-shot cells give ``--tile`` (and a pixel threshold, for defects).

Cost: 8 settings (2 profiles × 2 tilings × 2 ROIs) on 3 images of 200×260 px with the tiny
golden model; 4 servers, 3 exports per format, 8 torchrun jobs.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from synthetic import tiny_model_dir
from tipsomaly.cli.main import main
from tipsomaly.method.config import DetectorConfig
from tipsomaly.method.detector import Detector

SIZE, TILE, CLASS = "70", "140", "tile"
ATOL = 1e-5
PROFILES = (None, "untiled", "tiled")  # None: zero-shot
CELLS = [
    (profile, tiled, roi)
    for profile in (False, True)
    for tiled in (False, True)
    for roi in (False, True)
]
CELL_IDS = [
    f"{'profile' if p else 'zero-shot'}-{'tiled' if t else 'untiled'}-{'roi' if r else 'whole'}"
    for p, t, r in CELLS
]
FP32 = ["--dtype", "fp32"]  # `auto` is bf16 on CPUs with bf16 instructions: the graphs are fp32


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.random((h // 6 + 1, w // 6 + 1))
    img = np.kron(base, np.ones((6, 6)))[:h, :w] * 0.6 + 0.4 * rng.random((h, w))
    return (np.stack([img, img * 0.95, img * 0.85], -1) * 255).astype(np.uint8)


@dataclass
class World:
    root: Path
    model: Path
    images: Path
    roi: Path
    profiles: dict[str, Path]
    threshold: float  # the zero-shot cells' pixel threshold

    def names(self) -> list[str]:
        return sorted(p.stem for p in self.images.iterdir())

    def options(self, profile: bool, tiled: bool, roi: bool) -> list[str]:
        """The predict options of a cell (what every path is given)."""
        if profile:
            opts = ["--profile", str(self.profiles["tiled" if tiled else "untiled"])]
        else:
            opts = ["--model", str(self.model), "--image-size", SIZE]
            opts += ["--threshold", f"{self.threshold!r}"] + (["--tile", TILE] if tiled else [])
        return opts + (["--roi", str(self.roi)] if roi else [])


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    root = tmp_path_factory.mktemp("compose")
    model = tiny_model_dir(root / "model")
    rng = np.random.default_rng(19)
    images, refs = root / "images", root / "refs"
    images.mkdir()
    refs.mkdir()
    for i in range(3):
        img = _texture(rng, 200, 260)
        if i == 1:
            img[60:90, 150:190] = 15  # a dark defect, inside the ROI
        Image.fromarray(img).save(images / f"img_{i}.png")
    for i in range(4):
        Image.fromarray(_texture(rng, 200, 200)).save(refs / f"ref_{i}.png")
    mask = np.zeros((100, 130), np.uint8)  # half the images' size: resized to each (noted)
    mask[:, :95] = 255
    Image.fromarray(mask).save(root / "roi.png")
    profiles = {}
    for kind in ("untiled", "tiled"):
        out = root / f"profile-{kind}"
        argv = ["fit", str(refs), "--class-name", CLASS, "--model", str(model)]
        argv += ["--image-size", SIZE, "--false-alarm-rate", "0.2", "--out", str(out), "-q"]
        assert main(argv + FP32 + (["--tile", TILE] if kind == "tiled" else [])) == 0
        profiles[kind] = out
    # a pixel threshold that some of the zero-shot map is above (so there are defects)
    det = Detector(model, image_size=int(SIZE), text_cache=False)
    (pred,) = det.predict(images / "img_1.png", CLASS)
    threshold = float(np.quantile(pred.anomaly_map_original, 0.97))
    return World(root, model, images, root / "roi.png", profiles, threshold)


# -- what a path answered for one image ---------------------------------------------------------
@dataclass
class Answer:
    scores: tuple[float, float, float]  # image_score, score_cls1, score_cls2
    is_anomalous: bool | None
    threshold: float | None  # the pixel threshold the defects were cut at
    defects: list[dict] | None
    map: np.ndarray  # (H, W) float32 at the original size


def _from_outputs(out: Path) -> dict[str, Answer]:
    """A predict run's answers (scores.json rows, maps/NAME.npy)."""
    doc = json.loads((out / "scores.json").read_text())
    assert doc["complete"] is True
    answers = {}
    for row in doc["results"]:
        assert row["status"] == "ok", row["error"]
        name = row["name"]
        answers[name] = Answer(
            (row["image_score"], row["score_cls1"], row["score_cls2"]),
            row.get("is_anomalous"),
            None,
            row.get("defects"),
            np.load(out / "maps" / f"{name}.npy"),
        )
    return answers


def _predict_cli(world: World, out: Path, cell_options: list[str]) -> dict[str, Answer]:
    argv = ["predict", str(world.images), "--class-name", CLASS, "--save-maps", "--no-overlays"]
    assert main([*argv, *cell_options, "--out", str(out), "-q"]) in (0,)
    return _from_outputs(out)


@pytest.fixture(scope="module")
def reference(world) -> dict[tuple, dict[str, Answer]]:
    """The predict CLI's answers in every cell: what every other path must give."""
    return {
        cell: _predict_cli(world, world.root / f"ref-{i}", world.options(*cell) + FP32)
        for i, cell in enumerate(CELLS)
    }


def _check(reference: dict[str, Answer], got: dict[str, Answer], *, exact: bool) -> None:
    assert sorted(got) == sorted(reference)
    for name, want in reference.items():
        have = got[name]
        assert have.map.shape == want.map.shape, name
        if exact:
            assert have.scores == want.scores, name
            assert np.array_equal(have.map, want.map), name
            assert have.is_anomalous == want.is_anomalous, name
            assert have.defects == want.defects, name
            continue
        assert np.abs(np.subtract(have.scores, want.scores)).max() <= ATOL, name
        assert np.abs(have.map - want.map).max() <= ATOL, name
        _check_defects(want, have, name)


def _check_defects(want: Answer, have: Answer, name: str) -> None:
    """Within the tolerance, the defect regions differ only by pixels whose map value lies
    within 1e-5 of the pixel threshold (then by nothing else)."""
    assert (want.defects is None) == (have.defects is None), name
    if want.defects is None:
        return
    if len(want.defects) == len(have.defects) and all(
        (a["bbox"], a["area_px"]) == (b["bbox"], b["area_px"])
        for a, b in zip(want.defects, have.defects, strict=True)
    ):
        for a, b in zip(want.defects, have.defects, strict=True):
            assert abs(a["peak"] - b["peak"]) <= ATOL and abs(a["mean"] - b["mean"]) <= ATOL
        return
    threshold = want.threshold
    assert threshold is not None, f"{name}: defects differ: {want.defects} != {have.defects}"
    flipped = (want.map >= threshold) != (have.map >= threshold)
    assert (np.abs(want.map[flipped] - threshold) <= ATOL).all(), name


def _with_threshold(answers: dict[str, Answer], threshold: float | None) -> dict[str, Answer]:
    for a in answers.values():
        a.threshold = threshold
    return answers


# -- the paths ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_detector_in_python(world, reference, cell):
    profile, tiled, roi = cell
    given = {"dtype": "fp32", "roi": str(world.roi) if roi else None}
    if profile:
        config = DetectorConfig.from_profile(world.profiles["tiled" if tiled else "untiled"])
        config = config.replace(**{k: v for k, v in given.items() if v is not None})
    else:
        config = DetectorConfig(
            model=str(world.model),
            image_size=int(SIZE),
            pixel_threshold=world.threshold,
            tile=int(TILE) if tiled else None,
            **given,
        )
    detector = Detector.from_config(config)
    files = sorted(world.images.iterdir())
    got = {}
    for path, pred in zip(files, detector.predict(files, CLASS), strict=True):
        assert pred.ok, pred.error
        defects = None if pred.defects is None else [d.to_dict() for d in pred.defects]
        got[path.stem] = Answer(
            (pred.image_score, pred.score_cls1, pred.score_cls2),
            pred.is_anomalous,
            pred.pixel_threshold,
            defects,
            pred.anomaly_map_original,
        )
        assert pred.tiles is None if not tiled else pred.tiles >= 2
        assert bool(pred.notes) == roi  # the ROI mask was resized to the image: said
    if not profile:  # zero-shot: is_anomalous only where an image threshold is given
        for a in got.values():
            a.is_anomalous = None
    _check(reference[cell], got, exact=True)


@pytest.fixture(scope="module")
def exports(world, tmp_path_factory) -> dict[tuple[str | None, str], Path]:
    """(profile kind or None, format) → an export folder: a zero-shot one (tiles and ROI are
    given when it is used) and one of each profile (its tiling comes with it)."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    root = tmp_path_factory.mktemp("exports")
    made = {}
    for kind in PROFILES:
        for fmt in ("onnx", "openvino"):
            out = root / f"{kind or 'zero-shot'}-{fmt}"
            source = (
                ["--profile", str(world.profiles[kind])]
                if kind
                else ["--model", str(world.model), "--image-size", SIZE, "--class-name", CLASS]
            )
            assert main(["export", *source, "--format", fmt, "--out", str(out), "-q"]) == 0
            made[(kind, fmt)] = out
    return made


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_exported_graph(world, reference, exports, cell, fmt):
    profile, tiled, roi = cell
    kind = ("tiled" if tiled else "untiled") if profile else None
    options = ["--model", str(exports[(kind, fmt)])]
    if not profile:  # the graph scores tiles and ROIs as the model does
        options += ["--threshold", repr(world.threshold)] + (["--tile", TILE] if tiled else [])
    if roi:
        options += ["--roi", str(world.roi)]
    got = _predict_cli(world, world.root / f"{fmt}-{CELLS.index(cell)}", options)
    want = reference[cell]
    threshold = world.threshold if not profile else _pixel_threshold(world, kind)
    _check(_with_threshold(want, threshold), got, exact=False)
    for name, a in want.items():  # decisions agree unless a score is within 1e-5 of it
        if a.is_anomalous != got[name].is_anomalous:
            image_threshold = _image_threshold(world, kind)
            assert abs(a.scores[0] - image_threshold) <= ATOL, name


def _profile_record(world: World, kind: str) -> dict:
    return json.loads((world.profiles[kind] / "profile.json").read_text())


def _pixel_threshold(world: World, kind: str) -> float:
    return _profile_record(world, kind)["thresholds"]["fused"]["pixel"]["threshold"]


def _image_threshold(world: World, kind: str | None) -> float:
    return _profile_record(world, kind)["thresholds"]["fused"]["image"]["threshold"]


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_torchrun_with_two_processes(world, reference, cell):
    """Each rank scores a share (tiles and ROIs included); rank 0 merges: one process's
    outputs, bit for bit."""
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    out = world.root / f"torchrun-{CELLS.index(cell)}"
    cmd = [torchrun, "--standalone", "--nproc-per-node", "2", "-m", "tipsomaly", "predict"]
    cmd += [str(world.images), "--class-name", CLASS, "--save-maps", "--no-overlays", "-q"]
    cmd += [*world.options(*cell), *FP32, "--out", str(out)]
    # each rank with the reference process's threads: the matrix products' blocking (and so
    # their last bits) depends on the thread count, not on the process count
    threads = str(torch.get_num_threads())
    env = {**os.environ, "TIPSOMALY_NUM_THREADS": threads, "TIPSOMALY_DIST_TIMEOUT": "120"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    _check(reference[cell], _from_outputs(out), exact=True)


# -- serve over HTTP ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def servers(world):
    """One real ``tipsomaly serve`` per (profile, tiling) on 127.0.0.1: the ROI travels with
    each request."""
    pytest.importorskip("fastapi")
    import httpx

    running: dict[tuple[bool, bool], tuple[subprocess.Popen, str, Path]] = {}
    try:
        for profile in (False, True):
            for tiled in (False, True):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", 0))
                    port = s.getsockname()[1]
                log = world.root / f"serve-{port}.log"
                cmd = [sys.executable, "-m", "tipsomaly", "serve", *FP32, "--classes", CLASS]
                cmd += [*world.options(profile, tiled, False), "--port", str(port)]
                process = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
                running[(profile, tiled)] = (process, f"http://127.0.0.1:{port}", log)
        deadline = time.monotonic() + 180
        for process, url, log in running.values():
            while not _healthy(httpx, url):
                assert process.poll() is None, log.read_text(errors="replace")[-2000:]
                assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
                time.sleep(0.2)
        yield {key: url for key, (_, url, _) in running.items()}
    finally:
        for process, _, _ in running.values():
            process.send_signal(signal.SIGTERM)
            process.wait(60)


def _healthy(httpx, url: str) -> bool:
    """Whether the server answers 200 on /health (not yet listening: False)."""
    try:
        return httpx.get(url + "/health", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.parametrize("cell", CELLS, ids=CELL_IDS)
def test_serve_over_http(world, reference, servers, cell):
    import httpx

    profile, tiled, roi = cell
    url = servers[(profile, tiled)]
    got = {}
    for path in sorted(world.images.iterdir()):
        files = [("file", (path.name, path.read_bytes(), "image/png"))]
        if roi:
            files.append(("roi", ("roi.png", world.roi.read_bytes(), "image/png")))
        answer = httpx.post(
            url + "/v1/predict",
            data={"class_name": CLASS, "return_map": "npy"},
            files=files,
            timeout=120,
        )
        assert answer.status_code == 200, answer.text
        (result,) = answer.json()["results"]
        assert result["error"] is None
        amap = np.load(io.BytesIO(base64.b64decode(result["map_npy"])), allow_pickle=False)
        got[path.stem] = Answer(
            (result["image_score"], result["score_cls1"], result["score_cls2"]),
            result["is_anomalous"],
            result["pixel_threshold"],
            result["defects"],
            amap,
        )
    if not profile:  # zero-shot: no image threshold, so no decision
        assert all(a.is_anomalous is None for a in got.values())
    _check(reference[cell], got, exact=True)
