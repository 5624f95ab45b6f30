"""Regions of interest through the service (FastAPI's TestClient, the tiny golden model).

A request's ``roi`` part must give exactly what ``tipsomaly predict --roi MASK`` gives for the
same files: scores, maps and defect records bit for bit; without the part the server's own
``--roi`` applies; images of requests with different ROIs may share a forward pass and each
keeps its own; an unreadable or empty mask is a 422 naming the part.
"""

from __future__ import annotations

import base64
import io
import os
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("multipart")
pytest.importorskip("httpx")

from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import SIZE, Blocking, cli_rows  # noqa: E402

from tipsomaly.cli.main import main  # noqa: E402
from tipsomaly.cli.options import resolve_runtime  # noqa: E402
from tipsomaly.data.roi import fit_roi, load_roi  # noqa: E402
from tipsomaly.method.detector import Detector  # noqa: E402
from tipsomaly.serve.app import create_app  # noqa: E402
from tipsomaly.serve.config import ServeConfig  # noqa: E402


class RoiCase:
    """An ROI mask of its own size (every image's mask is resized, and noted), and what
    ``predict --profile P --roi MASK --save-maps`` wrote for the profile's class."""

    def __init__(self, root: Path, mask: Path, rows: dict[str, dict], out: Path) -> None:
        self.root, self.mask, self.rows, self.out = root, mask, rows, out

    def map_of(self, filename: str) -> np.ndarray:
        return np.load(self.out / "maps" / f"{self.rows[filename]['name']}.npy")


@pytest.fixture(scope="module")
def roi_case(serve_data) -> RoiCase:
    root = serve_data.root / "roi-case"
    root.mkdir(exist_ok=True)
    mask = np.zeros((80, 90), np.uint8)
    mask[10:70, 5:60] = 255  # holds the dents (rows 20-40, columns 30-50) of the dented images
    path = root / "roi.png"
    Image.fromarray(mask).save(path)
    out = root / "cli"
    files = serve_data.images["tile"]
    code = main(["predict", *map(str, files), "--class-name", "tile", "--profile",
                 str(serve_data.profile), "--roi", str(path), "--save-maps", "--no-overlays",
                 "--out", str(out), "--model", str(serve_data.model), "--image-size", str(SIZE),
                 "-q"])  # fmt: skip
    assert code == 0
    return RoiCase(root, path, cli_rows(out), out)


def detector_for(serve_data, **settings) -> Detector:
    """Set up as ``tipsomaly predict --profile`` / ``serve`` set it up (dtype auto)."""
    device, dtype = resolve_runtime("auto", "auto")
    return Detector(
        serve_data.model,
        image_size=SIZE,
        profile=[serve_data.profile],
        device=device,
        dtype=dtype,
        **settings,
    )


@pytest.fixture(scope="module")
def detector(serve_data) -> Detector:
    return detector_for(serve_data)


@contextmanager
def running(config: ServeConfig, load):
    with TestClient(create_app(config, load)) as client:
        assert client.app.state.service.wait_ready(30), client.get("/health").json()
        yield client


@pytest.fixture(scope="module")
def client(detector):
    with running(ServeConfig(classes=("screw",)), lambda: detector) as c:
        yield c


def files_part(paths):
    return [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]


def roi_part(path: Path, name: str | None = None):
    return [("roi", (name or path.name, path.read_bytes(), "image/png"))]


def npy(encoded: str) -> np.ndarray:
    return np.load(io.BytesIO(base64.b64decode(encoded)), allow_pickle=False)


def assert_as_predict_roi(res: dict, case: RoiCase) -> None:
    """One answer equals ``predict --roi``'s row and map for its file, bit for bit."""
    row = case.rows[res["filename"]]
    assert res["error"] is None and row["error"] is None
    for key in ("image_score", "score_cls1", "score_cls2", "threshold", "is_anomalous", "mode"):
        assert res[key] == row[key], (res["filename"], key)
    assert res["defects"] == row["defects"], res["filename"]
    assert "; ".join(res["notes"]) == row["note"]  # the mask was resized to the image
    np.testing.assert_array_equal(npy(res["map_npy"]), case.map_of(res["filename"]))


# -- the roi part ------------------------------------------------------------------------------
def test_a_roi_part_gives_what_predict_roi_gives(client, serve_data, roi_case):
    paths = serve_data.images["tile"]
    r = client.post(
        "/v1/predict",
        files=files_part(paths) + roi_part(roi_case.mask),
        data={"class_name": "tile", "return_map": "npy"},
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [x["filename"] for x in results] == [p.name for p in paths]
    mask = load_roi(roi_case.mask)
    for res in results:
        assert res["roi"] == "request"
        assert_as_predict_roi(res, roi_case)
        inside, _ = fit_roi(mask, tuple(res["size"]))
        assert not npy(res["map_npy"])[~inside].any()  # 0 outside the ROI
    # the ROI matters here: without it some answers differ (else this test could not fail)
    whole = [serve_data.cli[x["filename"]] for x in results]
    assert any(x["image_score"] != w["image_score"] for x, w in zip(results, whole, strict=True))
    assert any(x["defects"] != w["defects"] for x, w in zip(results, whole, strict=True))
    assert any(x["defects"] for x in results)  # defect records are compared, not just []


def test_the_servers_roi_applies_without_a_roi_part(serve_data, roi_case):
    with_roi = detector_for(serve_data, roi=str(roi_case.mask))
    with running(ServeConfig(), lambda: with_roi) as c:
        info = c.get("/v1/info").json()
        assert info["roi"] == os.path.abspath(roi_case.mask)
        assert info["identity"]["roi"] == with_roi.identity.roi is not None
        paths = serve_data.images["tile"]
        r = c.post("/v1/predict", files=files_part(paths), data={"return_map": "npy"})
        assert r.status_code == 200, r.text
        for res in r.json()["results"]:
            assert res["roi"] == "server"
            assert_as_predict_roi(res, roi_case)


def test_without_any_roi_the_whole_image_is_inspected(client, serve_data):
    paths = serve_data.images["tile"][4:5]
    r = client.post("/v1/predict", files=files_part(paths), data={"return_map": "npy"})
    (res,) = r.json()["results"]
    assert res["roi"] is None and res["notes"] == []
    assert res["image_score"] == pytest.approx(
        serve_data.cli[paths[0].name]["image_score"], abs=1e-6
    )
    assert npy(res["map_npy"]).all()  # no pixel zeroed


def test_requests_with_different_rois_share_a_forward_and_keep_their_own(
    detector, serve_data, roi_case
):
    blocking = Blocking(detector)
    tile = serve_data.images["tile"]
    with running(ServeConfig(batch_size=8, max_wait_ms=0), lambda: blocking) as c:
        answers: dict[str, object] = {}

        def send(key, files, extra=()):
            answers[key] = c.post(
                "/v1/predict",
                files=files_part(files) + list(extra),
                data={"class_name": "tile", "return_map": "npy"},
            )

        first = threading.Thread(target=send, args=("first", tile[:1]))
        first.start()
        assert blocking.entered.wait(10)  # the model thread holds the first request
        queued = [
            threading.Thread(target=send, args=("roi", tile[4:7], roi_part(roi_case.mask))),
            threading.Thread(target=send, args=("whole", tile[4:7])),
        ]
        for t in queued:
            t.start()
        batcher = c.app.state.service.batcher
        deadline = time.monotonic() + 10
        while batcher.queued < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert batcher.queued == 6
        blocking.gate.set()
        for t in (first, *queued):
            t.join(30)
    mask = load_roi(roi_case.mask)
    for key in ("roi", "whole"):
        assert answers[key].status_code == 200, answers[key].text
        for res in answers[key].json()["results"]:
            assert res["batch_images"] == 6  # both requests in one forward pass
            row = (
                roi_case.rows[res["filename"]] if key == "roi" else serve_data.cli[res["filename"]]
            )
            assert res["image_score"] == pytest.approx(row["image_score"], abs=1e-6)
            assert res["roi"] == ("request" if key == "roi" else None)
            inside, _ = fit_roi(mask, tuple(res["size"]))
            outside = npy(res["map_npy"])[~inside]
            assert (not outside.any()) if key == "roi" else outside.all()


# -- refusals ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not an image at all", "not a recognised image format"),
        (b"", "empty"),
        ("black", "no white pixel"),
    ],
)
def test_a_bad_roi_part_is_422_naming_it(client, serve_data, content, message):
    if content == "black":
        buf = io.BytesIO()
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(buf, format="PNG")
        content = buf.getvalue()
    files = files_part(serve_data.images["tile"][:1]) + [
        ("roi", ("mask.png", content, "image/png"))
    ]
    r = client.post("/v1/predict", files=files, data={"class_name": "tile"})
    assert r.status_code == 422, r.text
    body = r.json()
    assert body["detail"].startswith(
        ("cannot read the roi part (mask.png)", "the roi part (mask.png)")
    )
    assert message in body["detail"] and len(body["detail"].splitlines()) == 1
    assert body["errors"][0]["filename"] == "mask.png"
    ok = client.post("/v1/predict", files=files_part(serve_data.images["tile"][:1]))
    assert ok.status_code == 200  # the service stays up
