"""``serve --db`` in-process (FastAPI's test client, the tiny golden model, a real SQLite file):
one record per answer, equal to it; the records, image, overlay and review endpoints and their
refusals; strict against best-effort records on a database that refuses writes; /metrics;
profile reload with a batch in flight."""

from __future__ import annotations

import io
import logging
import shutil
import threading
import time
from contextlib import contextmanager

import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("sqlalchemy")

from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import SIZE, TOKEN, Blocking, write_images  # noqa: E402

from tipsomaly.cli.main import main  # noqa: E402
from tipsomaly.cli.options import resolve_runtime  # noqa: E402
from tipsomaly.method.detector import Detector  # noqa: E402
from tipsomaly.method.profile import Profile, profile_digest  # noqa: E402
from tipsomaly.records.store import RecordStore  # noqa: E402
from tipsomaly.serve.app import create_app  # noqa: E402
from tipsomaly.serve.config import ServeConfig  # noqa: E402

#: the answer's entries its record holds as they are
SAME = (
    "class_name", "mode", "image_score", "score_cls1", "score_cls2", "threshold",
    "threshold_source", "pixel_threshold", "is_anomalous", "defects", "roi", "error",
)  # fmt: skip
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def detector_of(serve_data, profile=None) -> Detector:
    device, dtype = resolve_runtime("auto", "auto")
    return Detector(
        serve_data.model, image_size=SIZE, profile=[profile or serve_data.profile],
        device=device, dtype=dtype,
    )  # fmt: skip


@pytest.fixture(scope="module")
def detector(serve_data) -> Detector:
    return detector_of(serve_data)


@contextmanager
def running(config: ServeConfig, load):
    with TestClient(create_app(config, load)) as client:
        assert client.app.state.service.wait_ready(30), client.get("/health").json()
        yield client


def files_part(paths):
    return [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]


@pytest.fixture
def recorded(tmp_path, detector):
    config = ServeConfig(
        classes=("screw",), token=TOKEN, db=str(tmp_path / "r.sqlite"),
        keep_images=str(tmp_path / "kept"),
    )  # fmt: skip
    with running(config, lambda: detector) as c:
        yield c


def test_every_answer_has_one_record_equal_to_it(recorded, serve_data, tmp_path):
    paths = serve_data.images["tile"]
    headers = {**AUTH, "X-Station-Id": "line-3/cam-1"}
    r = recorded.post("/v1/predict", files=files_part(paths), headers=headers)
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    digest = profile_digest(Profile.load(serve_data.profile))
    ids = [x["record_id"] for x in results]
    assert len(set(ids)) == len(paths) and None not in ids
    assert any(x["is_anomalous"] for x in results) and not all(x["is_anomalous"] for x in results)
    for path, answer in zip(paths, results, strict=True):
        got = recorded.get(f"/v1/records/{answer['record_id']}", headers=AUTH).json()
        assert {k: got[k] for k in SAME} == {k: answer[k] for k in SAME}
        assert got["station"] == "line-3/cam-1" and got["filename"] == path.name
        assert (got["profile_id"], got["source"]) == (digest, "serve")
        assert got["identity"]["model"]["name"] and got["latency_ms"] > 0
        assert [got["height"], got["width"]] == answer["size"]
        image = recorded.get(f"/v1/records/{answer['record_id']}/image", headers=AUTH)
        assert image.content == path.read_bytes() and image.headers["content-type"] == "image/png"
        drawn = recorded.get(f"/v1/records/{answer['record_id']}/overlay", headers=AUTH)
        assert Image.open(io.BytesIO(drawn.content)).size == tuple(answer["size"][::-1])
    # the same image again: a new record, the kept image not written twice
    again = recorded.post("/v1/predict", files=files_part(paths[:1]), headers=AUTH).json()
    assert again["results"][0]["record_id"] > max(ids)
    assert len([p for p in (tmp_path / "kept").rglob("*") if p.is_file()]) == 2 * len(paths)

    listed = recorded.get("/v1/records", params={"outcome": "anomalous"}, headers=AUTH).json()
    flagged = {x["record_id"] for x in results if x["is_anomalous"]}
    assert {x["id"] for x in listed["records"]} == flagged
    by_station = recorded.get("/v1/records", params={"station": "line-3/cam-1", "limit": 2},
                              headers=AUTH).json()  # fmt: skip
    assert [x["id"] for x in by_station["records"]] == sorted(ids)[::-1][:2]
    assert by_station["next_before_id"] == sorted(ids)[::-1][1]
    first = recorded.get(f"/v1/records/{min(ids)}", headers=AUTH).json()
    for since, until, want in ((first["time"], None, 8), (None, first["time"], 0),
                               (first["epoch"] + 3600, None, 0)):  # fmt: skip
        params = {k: v for k, v in (("since", since), ("until", until)) if v is not None}
        got = recorded.get("/v1/records", params=params, headers=AUTH).json()["records"]
        assert len(got) == want, (since, until)


def test_reviews_through_the_api_and_their_refusals(recorded, serve_data, tmp_path):
    paths = serve_data.images["tile"]
    results = recorded.post("/v1/predict", files=files_part(paths), headers=AUTH).json()["results"]
    flagged = next(x["record_id"] for x in results if x["is_anomalous"])
    url = f"/v1/records/{flagged}/review"
    body = {"verdict": "false_alarm", "reviewer": "ann", "class": "tile"}
    assert recorded.post(url, json=body).status_code == 401  # behind the token
    r = recorded.post(url, json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["verdict"] == "false_alarm" and r.json()["reviews"][0]["reviewer"] == "ann"
    unreviewed = recorded.get("/v1/records", params={"unreviewed": True}, headers=AUTH).json()
    assert flagged not in {x["id"] for x in unreviewed["records"]}

    missing = recorded.post("/v1/records/987654/review", json=body, headers=AUTH)
    assert missing.status_code == 404
    assert missing.json()["detail"] == f"no record 987654 in {tmp_path / 'r.sqlite'}"
    other = recorded.post(url, json={**body, "class": "screw"}, headers=AUTH)
    assert other.status_code == 409 and "not 'screw'" in other.json()["detail"]
    wrong = recorded.post(url, json={**body, "verdict": "missed_defect"}, headers=AUTH)
    assert wrong.status_code == 409 and "was flagged" in wrong.json()["detail"]
    bad = recorded.post(url, json={**body, "verdict": "meh"}, headers=AUTH)
    assert bad.status_code == 422 and "verdict" in bad.json()["detail"]
    assert recorded.get("/v1/records/987654", headers=AUTH).status_code == 404
    assert recorded.get("/v1/records?since=yesterday", headers=AUTH).status_code == 422
    long = recorded.post("/v1/predict", files=files_part(paths[:1]),
                         headers={**AUTH, "X-Station-Id": "x" * 300})  # fmt: skip
    assert long.status_code == 422 and "X-Station-Id" in long.json()["detail"]


def test_metrics_count_requests_decisions_batches_and_records(recorded, serve_data, detector):
    paths = serve_data.images["tile"]
    recorded.post("/v1/predict", files=files_part(paths), headers=AUTH)
    text = recorded.get("/metrics").text  # open, as /health: a scraper has no token
    decided = [line for line in text.splitlines() if line.startswith("tipsomaly_decisions_total")]
    assert sum(float(line.rsplit(" ", 1)[1]) for line in decided) == len(paths)
    assert f'tipsomaly_records_total{{result="stored"}} {len(paths)}.0' in text
    assert f"tipsomaly_batch_images_sum {len(paths)}.0" in text
    assert "tipsomaly_predict_latency_seconds_count 1.0" in text
    assert (
        'tipsomaly_http_requests_total{method="POST",route="/v1/predict",status="200"} 1.0' in text
    )
    assert "tipsomaly_queue_images 0.0" in text
    assert 'tipsomaly_flag_rate{class_name="tile"}' in text
    with running(ServeConfig(), lambda: detector) as other:  # its own registry: starts at 0
        assert "tipsomaly_predict_latency_seconds_count 0.0" in other.get("/metrics").text


@pytest.mark.parametrize("mode", ["strict", "best-effort"])
def test_a_database_that_refuses_writes(mode, tmp_path, detector, serve_data, caplog):
    path = tmp_path / "r.sqlite"
    RecordStore(path).close()
    config = ServeConfig(db=f"sqlite:///file:{path}?mode=ro&uri=true", records=mode)
    with running(config, lambda: detector) as c, caplog.at_level(logging.ERROR):
        r = c.post("/v1/predict", files=files_part(serve_data.images["tile"][:2]))
        text = c.get("/metrics").text
    if mode == "strict":
        assert r.status_code == 503
        assert r.json()["detail"].startswith("the decision was not answered: its record cannot")
        assert "results" not in r.json()
    else:
        assert r.status_code == 200 and [x["record_id"] for x in r.json()["results"]] == [None] * 2
    assert 'tipsomaly_records_total{result="failed"} 2.0' in text
    logged = [rec.getMessage() for rec in caplog.records if "readonly" in rec.getMessage()]
    assert len(logged) == 1 and "\n" not in logged[0]
    assert RecordStore(path).all_ids() == []


def test_reload_switches_versions_and_the_batch_in_flight_keeps_the_old(tmp_path, serve_data):
    folder = tmp_path / "profile"
    shutil.copytree(serve_data.profile, folder)
    blocking = Blocking(detector_of(serve_data, folder))
    blocking.gate.set()
    config = ServeConfig(db=str(tmp_path / "r.sqlite"), max_wait_ms=0, batch_size=1)
    paths = serve_data.images["tile"]
    old = profile_digest(Profile.load(folder))
    with running(config, lambda: blocking) as c:
        blocking.gate.clear()
        blocking.entered.clear()
        answers = {}
        held = threading.Thread(target=lambda: answers.update(
            held=c.post("/v1/predict", files=files_part(paths[:1])).json()))  # fmt: skip
        held.start()
        assert blocking.entered.wait(10)  # a batch is being decided by the old version
        refs = write_images(tmp_path / "new-refs", 5, seed=11)
        model = ["--model", str(serve_data.model), "--image-size", str(SIZE), "-q"]
        code = main(["fit", *map(str, refs), "--class-name", "tile", "--out", str(folder), *model])
        assert code == 0
        new = profile_digest(Profile.load(folder))
        assert new != old
        reloaded = {}
        reload = threading.Thread(target=lambda: reloaded.update(r=c.post("/v1/profiles/reload")))
        reload.start()
        time.sleep(0.3)
        assert reload.is_alive()  # waits for the batch in flight
        blocking.gate.set()
        held.join(30)
        reload.join(30)
        body = reloaded["r"].json()
        assert reloaded["r"].status_code == 200, body
        (entry,) = body["profiles"]
        assert (entry["previous"]["profile_id"], entry["current"]["profile_id"]) == (old, new)
        assert entry["changed"] is True
        after = c.post("/v1/predict", files=files_part(paths[:1])).json()
        store = c.app.state.service.recorder.store
        assert store.get(answers["held"]["results"][0]["record_id"])["profile_id"] == old
        assert store.get(after["results"][0]["record_id"])["profile_id"] == new
        assert after["results"][0]["threshold"] == Profile.load(folder).image_threshold()
        assert 'tipsomaly_profile_reloads_total{result="done"} 1.0' in c.get("/metrics").text


def test_reload_refusals(tmp_path, serve_data, detector):
    folder = tmp_path / "profile"
    shutil.copytree(serve_data.profile, folder)
    with running(ServeConfig(token=TOKEN), lambda: detector_of(serve_data, folder)) as c:
        assert c.post("/v1/profiles/reload").status_code == 401
        (folder / "bank.safetensors").write_bytes(b"broken")
        r = c.post("/v1/profiles/reload", headers=AUTH)
        assert r.status_code == 409 and "damaged" in r.json()["detail"]
        assert c.get("/v1/records", headers=AUTH).status_code == 409  # no --db


def test_an_engine_served_profile_reloads_by_building_its_engine_again(
    tmp_path, serve_data, monkeypatch
):
    """``serve --engine onnxruntime --profile P``: a reload exports the engine of P's current
    version (a new cache entry: the key names the profile's content) and swaps it in; each
    record names the version that decided it, and the new engine decides with its threshold."""
    pytest.importorskip("onnxruntime")
    from tipsomaly.cli.options import resolve_engine
    from tipsomaly.method.config import DetectorConfig
    from tipsomaly.runners import engines

    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path / "home"))
    model = ["--model", str(serve_data.model), "--image-size", str(SIZE), "--dtype", "fp32", "-q"]
    folder = tmp_path / "profile"
    refs = write_images(tmp_path / "refs", 6, seed=1)
    assert main(["fit", *map(str, refs), "--class-name", "tile", "--out", str(folder), *model]) == 0
    settings = resolve_engine(DetectorConfig(
        model=str(serve_data.model), image_size=SIZE, profiles=(str(folder),),
        engine="onnxruntime", precision="fp32",
    ))  # fmt: skip
    exports = []
    real_export = engines._export
    monkeypatch.setattr(engines, "_export", lambda *a: (exports.append(a), real_export(*a))[1])
    config = ServeConfig(settings=settings, db=str(tmp_path / "r.sqlite"), max_wait_ms=0)
    image = files_part(serve_data.images["tile"][:1])
    with running(config, lambda: engines.open_engine(settings, {}, "tile")) as c:
        first = c.post("/v1/predict", files=image).json()["results"][0]
        old = profile_digest(Profile.load(folder))
        more = write_images(tmp_path / "more", 2, seed=12)
        assert main(["profile", "update", str(folder), "--add-normal", *map(str, more), "-q"]) == 0
        new = Profile.load(folder)
        r = c.post("/v1/profiles/reload")
        assert r.status_code == 200, r.text
        (entry,) = r.json()["profiles"]
        assert entry["previous"]["profile_id"] == old
        assert (entry["current"]["profile_id"], entry["current"]["version"]) == (
            profile_digest(new), 2)  # fmt: skip
        after = c.post("/v1/predict", files=image).json()["results"][0]
        store = c.app.state.service.recorder.store
    assert len(exports) == 2  # one engine per version
    assert store.get(first["record_id"])["profile_id"] == old
    assert store.get(after["record_id"])["profile_id"] == profile_digest(new)
    assert after["threshold"] == pytest.approx(new.image_threshold(), abs=1e-6)
