"""The service in-process, through FastAPI's ASGI test client, on the tiny golden model.

Scores must equal ``tipsomaly predict``'s for the same files (conftest); refusals must be the
documented statuses with a JSON body naming the problem, and the service must keep serving.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import threading
import time
import zlib
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import SIZE, TOKEN, Blocking  # noqa: E402

from tipsomaly.cli.options import resolve_runtime  # noqa: E402
from tipsomaly.data.images import load_image  # noqa: E402
from tipsomaly.method.detector import Detector  # noqa: E402
from tipsomaly.report.overlay import overlay as report_overlay  # noqa: E402
from tipsomaly.serve.app import create_app  # noqa: E402
from tipsomaly.serve.config import ServeConfig  # noqa: E402

TOL = 1e-6


@pytest.fixture(scope="module")
def detector(serve_data) -> Detector:
    """Set up as ``tipsomaly predict --profile`` / ``serve`` set it up (dtype auto)."""
    device, dtype = resolve_runtime("auto", "auto")
    return Detector(
        serve_data.model, image_size=SIZE, profile=[serve_data.profile], device=device, dtype=dtype
    )


@contextmanager
def running(config: ServeConfig, load, *, ready: bool = True):
    with TestClient(create_app(config, load)) as client:
        if ready:
            assert client.app.state.service.wait_ready(30), client.get("/health").json()
        yield client


@pytest.fixture(scope="module")
def client(detector):
    config = ServeConfig(classes=("screw",), max_upload_bytes=256 * 1024, max_files=8)
    with running(config, lambda: detector) as c:
        yield c


def files_part(paths):
    return [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]


def png_bytes(encoded: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(encoded)))


# -- answers ----------------------------------------------------------------------------------
def test_every_answer_equals_the_cli(client, serve_data):
    for cls, paths in serve_data.images.items():
        r = client.post("/v1/predict", files=files_part(paths), data={"class_name": cls})
        assert r.status_code == 200, r.text
        body = r.json()
        assert [x["filename"] for x in body["results"]] == [p.name for p in paths]
        for res in body["results"]:
            cli = serve_data.cli[res["filename"]]
            for key in ("image_score", "score_cls1", "score_cls2"):
                assert res[key] == pytest.approx(cli[key], abs=TOL), (res["filename"], key)
            assert res["class_name"] == cls and res["error"] is None
            if cls == "tile":  # the profile's class: fused, with its calibrated threshold
                assert res["mode"] == cli["mode"] == "fused"
                assert res["threshold"] == pytest.approx(cli["threshold"], abs=0)
                assert res["is_anomalous"] == cli["is_anomalous"]
                assert res["threshold_source"] == "profile"
                assert res["pixel_threshold"] is not None
                assert res["defects"] == cli["defects"]  # the profile's pixel threshold
            else:
                assert res["mode"] == "zero-shot" and res["threshold"] is None
                assert res["is_anomalous"] is None
                assert res["defects"] is None and "defects" not in cli  # no pixel threshold
            assert res["overlay_png"] is res["map_npy"] is None
        timing = {"read_ms", "decode_ms", "wait_ms", "render_ms", "record_ms", "total_ms"}
        assert set(body["timing"]) == timing and body["timing"]["record_ms"] is None  # no --db


def test_the_maps_come_back_at_the_image_size_as_png_or_npy(client, serve_data, detector):
    path = serve_data.images["tile"][1]
    h, w = Image.open(path).size[::-1]
    expected = detector.predict(path, "tile")[0].anomaly_map_original

    r = client.post("/v1/predict", files=files_part([path]), data={"return_map": "npy"})
    res = r.json()["results"][0]
    assert res["class_name"] == "tile"  # no class_name: the one profile's class
    assert res["size"] == [h, w]
    arr = np.load(io.BytesIO(base64.b64decode(res["map_npy"])), allow_pickle=False)
    assert arr.dtype == np.float32 and arr.shape == (h, w)
    np.testing.assert_allclose(arr, expected, atol=TOL)

    r = client.post("/v1/predict", files=files_part([path]), data={"return_map": "png"})
    res = r.json()["results"][0]
    overlay, grey = png_bytes(res["overlay_png"]), png_bytes(res["map_png"])
    assert overlay.mode == "RGB" and overlay.size == (w, h)
    t = res["pixel_threshold"]  # a profile's class: coloured as `predict --profile` colours it
    drawn = report_overlay(load_image(path), expected, span=(0.0, 2 * t))
    np.testing.assert_array_equal(np.asarray(overlay), drawn)
    assert grey.mode == "L" and grey.size == (w, h)
    np.testing.assert_array_equal(
        np.asarray(grey), np.round(np.clip(expected, 0, 1) * 255).astype(np.uint8)
    )


def test_a_threshold_in_the_request_decides(client, serve_data):
    paths = serve_data.images["screw"][:2]
    r = client.post("/v1/predict", files=files_part(paths), data={"class_name": "screw",
                    "threshold": "0"})  # fmt: skip
    assert [x["is_anomalous"] for x in r.json()["results"]] == [True, True]
    r = client.post("/v1/predict", files=files_part(paths), data={"class_name": "screw",
                    "threshold": "2"})  # fmt: skip
    results = r.json()["results"]
    assert [x["is_anomalous"] for x in results] == [False, False]
    assert {x["threshold_source"] for x in results} == {"request"}


def test_info_says_what_is_served(client, serve_data, detector):
    info = client.get("/v1/info").json()
    assert info["status"] == "ready" and info["image_size"] == SIZE
    assert info["identity"] == json.loads(json.dumps(detector.identity.to_dict()))
    assert info["engine"] == "torch" and info["model"] == detector.identity.model["name"]
    assert info["tiling"] is info["tile"] is info["roi"] is None  # untiled, whole images
    assert info["classes"] == ["screw", "tile"]
    (profile,) = info["profiles"]
    assert profile["class_name"] == "tile" and profile["mode"] == "fused"
    assert profile["threshold"] is not None
    assert info["limits"]["max_files"] == 8 and info["auth"] is False
    assert info["stats"]["forwards"] >= 1 and info["stats"]["images"] >= 1
    assert info["version"] and info["dtype"] in ("fp32", "bf16", "fp16")


def test_the_page_is_served_with_its_script_and_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert client.head("/").status_code == 200
    script = client.get("/static/page.js")
    assert script.status_code == 200 and "/v1/predict" in script.text
    schema = client.get("/v1/openapi.json").json()
    assert {"/health", "/v1/info", "/v1/predict"} <= set(schema["paths"])
    for text in (page.text, script.text, client.get("/static/page.css").text):
        assert "http://" not in text and "https://" not in text  # no CDN, no external asset


def test_the_servers_thresholds_decide_and_give_defect_records(serve_data):
    device, dtype = resolve_runtime("auto", "auto")
    given = Detector(
        serve_data.model,
        image_size=SIZE,
        device=device,
        dtype=dtype,
        image_threshold=0.5,
        pixel_threshold=0.3,
    )
    paths = serve_data.images["screw"]
    expected = given.predict(paths, "screw")
    assert any(p.defects for p in expected)  # regions to compare, not just []
    with running(ServeConfig(), lambda: given) as c:
        info = c.get("/v1/info").json()
        assert (info["image_threshold"], info["pixel_threshold"]) == (0.5, 0.3)
        r = c.post("/v1/predict", files=files_part(paths), data={"class_name": "screw"})
    for res, want in zip(r.json()["results"], expected, strict=True):
        assert res["threshold"] == 0.5 and res["pixel_threshold"] == 0.3
        assert res["threshold_source"] == "given"
        assert res["is_anomalous"] == want.is_anomalous is not None
        assert res["defects"] == [d.to_dict() for d in want.defects]


# -- refusals ---------------------------------------------------------------------------------
def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG whose header declares ``width`` × ``height`` (a decompression bomb's shape)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))  # fmt: skip


def test_unreadable_uploads_are_422_naming_each_and_the_service_stays_up(client, serve_data):
    good = serve_data.images["screw"][0]
    whole = good.read_bytes()
    uploads = [
        ("file", ("bomb.png", png_declaring(60000, 60000), "image/png")),
        ("file", ("text.png", b"this is not an image", "image/png")),
        ("file", ("cut.png", whole[: len(whole) // 2], "image/png")),
        ("file", ("empty.png", b"", "image/png")),
        ("file", (good.name, whole, "image/png")),
    ]
    r = client.post("/v1/predict", files=uploads, data={"class_name": "screw"})
    assert r.status_code == 422
    body = r.json()
    assert body["detail"].startswith("cannot read 4 of 5 upload(s)")
    errors = {e["filename"]: e["error"] for e in body["errors"]}
    assert set(errors) == {"bomb.png", "text.png", "cut.png", "empty.png"}
    assert "image too large: 60000×60000" in errors["bomb.png"]
    assert "not a recognised image format" in errors["text.png"]
    assert "truncated or corrupt" in errors["cut.png"]
    assert "empty" in errors["empty.png"]
    ok = client.post("/v1/predict", files=files_part([good]), data={"class_name": "screw"})
    assert ok.status_code == 200
    assert ok.json()["results"][0]["image_score"] == pytest.approx(
        serve_data.cli[good.name]["image_score"], abs=TOL
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"class_name": "bolt"}, "unknown class_name 'bolt': this server serves 'screw', 'tile'"),
        ({"class_name": "x\x01"}, "control characters"),
        ({"class_name": "tile", "threshold": "2.5"}, "threshold must be in [0, 2]"),
        ({"class_name": "tile", "threshold": "nan"}, "finite"),
        ({"class_name": "tile", "return_map": "jpg"}, "return_map must be one of none, png, npy"),
    ],
)
def test_bad_fields_are_422_naming_the_problem(client, serve_data, data, message):
    r = client.post("/v1/predict", files=files_part(serve_data.images["tile"][:1]), data=data)
    assert r.status_code == 422
    assert message in r.json()["detail"]


def test_a_request_without_files_is_422(client):
    r = client.post("/v1/predict", data={"class_name": "tile"})
    assert r.status_code == 422


def test_images_over_the_pixel_limit_are_422(detector, serve_data):
    with running(ServeConfig(max_pixels=5000), lambda: detector) as c:
        r = c.post("/v1/predict", files=files_part(serve_data.images["tile"][:1]))
    assert r.status_code == 422
    assert "over the limit of 5,000 pixels" in r.json()["errors"][0]["error"]


def test_bodies_over_the_limit_and_too_many_files_are_413(client, serve_data):
    big = ("file", ("big.png", b"\0" * (300 * 1024), "image/png"))
    r = client.post("/v1/predict", files=[big], data={"class_name": "tile"})
    assert r.status_code == 413 and "--max-upload-mb" in r.json()["detail"]

    def chunked():  # no Content-Length: counted as it arrives
        for _ in range(40):
            yield b"x" * 8192

    r = client.post(
        "/v1/predict",
        content=chunked(),
        headers={"content-type": "multipart/form-data; boundary=b"},
    )
    assert r.status_code == 413

    nine = files_part(serve_data.images["tile"][:1] * 9)
    r = client.post("/v1/predict", files=nine, data={"class_name": "tile"})
    assert r.status_code == 413 and "at most 8 (--max-files)" in r.json()["detail"]
    assert client.get("/health").status_code == 200


def test_a_token_guards_the_api_but_not_the_page_or_health(detector, serve_data):
    with running(ServeConfig(token=TOKEN), lambda: detector) as c:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            r = c.get("/v1/info", headers=headers)
            assert r.status_code == 401, headers
            assert r.headers["www-authenticate"].startswith("Bearer")
            assert "Authorization: Bearer TOKEN" in r.json()["detail"]
        r = c.post("/v1/predict", files=files_part(serve_data.images["tile"][:1]))
        assert r.status_code == 401
        auth = {"Authorization": f"Bearer {TOKEN}"}
        assert c.get("/v1/info", headers=auth).json()["auth"] is True
        r = c.post("/v1/predict", files=files_part(serve_data.images["tile"][:1]), headers=auth)
        assert r.status_code == 200
        assert c.get("/health").status_code == 200 and c.get("/").status_code == 200


def test_health_is_503_while_the_model_loads(detector, serve_data):
    gate = threading.Event()

    def slow_load():
        assert gate.wait(30)
        return detector

    with running(ServeConfig(), slow_load, ready=False) as c:
        r = c.get("/health")
        assert r.status_code == 503 and r.json()["status"] == "loading"
        assert r.headers["retry-after"] == "5"
        r = c.post("/v1/predict", files=files_part(serve_data.images["tile"][:1]))
        assert r.status_code == 503 and "loading" in r.json()["detail"]
        assert c.get("/v1/info").json()["status"] == "loading"
        gate.set()
        assert c.app.state.service.wait_ready(30)
        assert c.get("/health").json()["status"] == "ready"


def test_a_model_that_fails_to_load_is_reported(serve_data):
    def broken():
        raise RuntimeError("weights are damaged\nsecond line")

    with running(ServeConfig(), broken, ready=False) as c:
        assert not c.app.state.service.wait_ready(30)
        r = c.get("/health")
        assert r.status_code == 503
        assert r.json() == {"status": "failed", "model": None,
                            "error": "weights are damaged", "queued": None}  # fmt: skip
        r = c.post("/v1/predict", files=files_part(serve_data.images["tile"][:1]))
        assert r.status_code == 503 and "could not be loaded" in r.json()["detail"]


def test_a_full_queue_is_503_with_retry_after_and_nothing_is_lost(detector, serve_data):
    blocking = Blocking(detector)
    config = ServeConfig(batch_size=1, max_wait_ms=0, max_queue=2, max_files=2)
    paths = serve_data.images["tile"]
    with running(config, lambda: blocking) as c:
        answers: dict[int, object] = {}

        def send(i, files):
            answers[i] = c.post("/v1/predict", files=files_part(files))

        first = threading.Thread(target=send, args=(0, paths[:1]))
        first.start()
        assert blocking.entered.wait(10)  # the model thread holds request 0
        second = threading.Thread(target=send, args=(1, paths[1:3]))
        second.start()
        service = c.app.state.service
        deadline = time.monotonic() + 10
        while service.batcher.queued < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert service.batcher.queued == 2  # the queue is full
        r = c.post("/v1/predict", files=files_part(paths[3:4]))
        assert r.status_code == 503
        assert "queue is full" in r.json()["detail"]
        assert int(r.headers["retry-after"]) >= 1
        blocking.gate.set()
        first.join(30)
        second.join(30)
        assert answers[0].status_code == answers[1].status_code == 200
        scores = [x["image_score"] for i in (0, 1) for x in answers[i].json()["results"]]
        expected = [serve_data.cli[p.name]["image_score"] for p in paths[:3]]
        assert scores == pytest.approx(expected, abs=TOL)
        assert c.post("/v1/predict", files=files_part(paths[3:4])).status_code == 200


def test_without_an_allow_list_the_class_names_served_are_bounded(serve_data, monkeypatch):
    import tipsomaly.serve.service as service_module

    monkeypatch.setattr(service_module, "MAX_OPEN_CLASSES", 2)
    zero_shot = Detector(serve_data.model, image_size=SIZE)
    path = serve_data.images["screw"][:1]
    with running(ServeConfig(), lambda: zero_shot) as c:
        assert c.get("/v1/info").json()["classes"] is None  # any name
        for name in ("screw", "bolt", "screw"):
            r = c.post("/v1/predict", files=files_part(path), data={"class_name": name})
            assert r.status_code == 200, r.text
        r = c.post("/v1/predict", files=files_part(path), data={"class_name": "nut"})
        assert r.status_code == 422 and "restart it with --classes" in r.json()["detail"]
        r = c.post("/v1/predict", files=files_part(path))
        assert r.status_code == 422 and r.json()["detail"] == "class_name is required"
