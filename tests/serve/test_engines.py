"""``tipsomaly serve`` over the other set-ups of the one pipeline, as processes (real uvicorn on
127.0.0.1): a tiled profile (``serve --profile PROF``, PROF fitted with ``--tile 140``) and an
export folder (``serve --model EXPORT``).

A tiled profile served must answer what ``predict IMAGES --profile PROF`` writes, bit for bit:
scores, decisions, defect records, tiles and maps. The export of that profile served must
answer what ``predict IMAGES --model EXPORT`` writes (within 1e-5: the same graph on the same
runtime) and stay within 1e-5 of the PyTorch path in fp32 (an export runs in fp32; the served
and fitted PyTorch paths use this machine's fastest dtype, as ``serve`` and ``fit`` do).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")
pytest.importorskip("onnxruntime")

from serve_helpers import SIZE, Server, cli_rows, start_serve, texture  # noqa: E402

from tipsomaly.cli.main import main  # noqa: E402

TILE = 140
TOL = 1e-5


@dataclass
class Case:
    profile: Path
    export: Path
    images: list[Path]
    torch_out: Path  # predict --profile PROF
    export_out: Path  # predict --model EXPORT
    fp32_out: Path  # predict --profile PROF --dtype fp32

    def rows(self, out: Path) -> dict[str, dict]:
        return cli_rows(out)

    @staticmethod
    def map_of(out: Path, row: dict) -> np.ndarray:
        return np.load(out / "maps" / f"{row['name']}.npy")


def _write(folder: Path, sizes: list[tuple[int, int]], seed: int, defect: bool = False):
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i, (h, w) in enumerate(sizes):
        img = texture(rng, h, w)
        if defect:
            img[60:90, 120:150] = 10
        path = folder / f"{folder.name}_{i:02d}.png"
        Image.fromarray(img).save(path)
        out.append(path)
    return out


@pytest.fixture(scope="module")
def case(serve_data) -> Case:
    root = serve_data.root / "engines"
    base = ["--image-size", str(SIZE), "-q"]
    refs = _write(root / "refs", [(200, 200)] * 4, seed=8)
    profile = root / "profile"
    code = main(["fit", *map(str, refs), "--class-name", "tile", "--tile", str(TILE),
                 "--false-alarm-rate", "0.2", "--out", str(profile),
                 "--model", str(serve_data.model), *base])  # fmt: skip
    assert code == 0
    images = _write(root / "good", [(200, 200), (180, 230)], seed=9)
    images += _write(root / "bad", [(210, 190), (200, 240)], seed=10, defect=True)
    export = root / "export"
    code = main(["export", "--profile", str(profile), "--class-name", "tile", "--format", "onnx",
                 "--out", str(export), "-q"])  # fmt: skip
    assert code == 0
    torch_out, export_out, fp32_out = root / "cli-torch", root / "cli-export", root / "cli-fp32"
    for model, out, extra in (
        (serve_data.model, torch_out, ["--profile", str(profile)]),
        (export, export_out, []),
        (serve_data.model, fp32_out, ["--profile", str(profile), "--dtype", "fp32"]),
    ):
        code = main(["predict", *map(str, images), "--class-name", "tile", "--model", str(model),
                     *extra, "--save-maps", "--no-overlays", "--out", str(out), "-q"])  # fmt: skip
        assert code == 0
    return Case(profile, export, images, torch_out, export_out, fp32_out)


@pytest.fixture(scope="module")
def _engine_servers(case, serve_data) -> Iterator[dict[str, Server]]:
    """Both servers started together (each takes seconds to import torch and load)."""
    servers = {
        "tiled": start_serve(serve_data.root, "--profile", str(case.profile)),
        "export": start_serve(serve_data.root, "--model", str(case.export)),
    }
    try:
        yield servers
    finally:
        for srv in servers.values():
            srv.stop()


@pytest.fixture(scope="module")
def tiled_server(_engine_servers) -> Server:
    _engine_servers["tiled"].wait_ready()
    return _engine_servers["tiled"]


@pytest.fixture(scope="module")
def export_server(_engine_servers) -> Server:
    _engine_servers["export"].wait_ready()
    return _engine_servers["export"]


def predict(server: Server, paths: list[Path]) -> list[dict]:
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
    r = httpx.post(server.url + "/v1/predict", files=files, data={"return_map": "npy"}, timeout=120)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == [p.name for p in paths]
    return results


def npy(encoded: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(encoded)), allow_pickle=False)


def test_a_tiled_profile_is_served_as_predict_scores_it(tiled_server, case):
    info = httpx.get(tiled_server.url + "/v1/info", timeout=30).json()
    assert info["tiling"] == {"tile": TILE, "overlap": 0.25} == info["identity"]["tiling"]
    assert info["engine"] == "torch" and [p["class_name"] for p in info["profiles"]] == ["tile"]
    rows = case.rows(case.torch_out)
    results = predict(tiled_server, case.images)  # no class_name: the profile's
    for res in results:
        row = rows[res["filename"]]
        assert res["tiles"] is not None and res["tiles"] > 1  # scored tile by tile
        for key in ("image_score", "score_cls1", "score_cls2", "mode", "threshold"):
            assert res[key] == row[key], (res["filename"], key)
        assert res["is_anomalous"] == row["is_anomalous"] is not None
        assert res["defects"] == row["defects"]
        np.testing.assert_array_equal(npy(res["map_npy"]), case.map_of(case.torch_out, row))
    assert any(res["defects"] for res in results)  # defect records are compared, not just []


def test_an_export_is_served_as_predict_model_export_scores_it(export_server, case):
    info = httpx.get(export_server.url + "/v1/info", timeout=30).json()
    assert info["engine"] == "onnxruntime" and info["identity"]["engine"] == "onnxruntime"
    assert info["tiling"] == {"tile": TILE, "overlap": 0.25}
    assert httpx.get(export_server.url + "/health", timeout=30).json()["model"]
    exported, torch_rows = case.rows(case.export_out), case.rows(case.fp32_out)
    results = predict(export_server, case.images)
    for res in results:
        row = exported[res["filename"]]
        for key in ("image_score", "score_cls1", "score_cls2"):
            assert res[key] == pytest.approx(row[key], abs=TOL), (res["filename"], key)
            assert res[key] == pytest.approx(torch_rows[res["filename"]][key], abs=TOL)
        assert (res["mode"], res["threshold"]) == (row["mode"], row["threshold"])
        assert res["is_anomalous"] == row["is_anomalous"] is not None
        assert res["tiles"] is not None and res["tiles"] > 1
        served = [(d["id"], d["bbox"], d["area_px"]) for d in res["defects"]]
        assert served == [(d["id"], d["bbox"], d["area_px"]) for d in row["defects"]]
        for d, e in zip(res["defects"], row["defects"], strict=True):
            assert d["peak"] == pytest.approx(e["peak"], abs=TOL)
        np.testing.assert_allclose(
            npy(res["map_npy"]), case.map_of(case.export_out, row), atol=TOL, rtol=0
        )
    assert any(res["defects"] for res in results)


def test_an_export_serves_its_own_class_only(export_server, case):
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in case.images[:1]]
    r = httpx.post(
        export_server.url + "/v1/predict", files=files, data={"class_name": "screw"}, timeout=60
    )
    assert r.status_code == 422
    assert "'screw'" in r.json()["detail"] and len(r.json()["detail"].splitlines()) == 1
