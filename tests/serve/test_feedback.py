"""The feedback loop through the service (in-process app, real SQLite file, real profile
folder): a normal image flagged (a false alarm) is reviewed as normal, ``tipsomaly profile
update --from-db`` adds it, ``POST /v1/profiles/reload`` switches to the new version, and the
same image is no longer flagged; ``profile rollback`` + reload restores the old decisions
exactly. And ``GET /v1/monitor``: each profiled class's drift check on its records."""

from __future__ import annotations

import shutil
from contextlib import contextmanager

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("fastapi")
pytest.importorskip("httpx")
pytest.importorskip("sqlalchemy")
pytest.importorskip("scipy")

from fastapi.testclient import TestClient  # noqa: E402
from serve_helpers import SIZE, texture  # noqa: E402

from tipsomaly.cli.main import main  # noqa: E402
from tipsomaly.cli.options import resolve_runtime  # noqa: E402
from tipsomaly.method.detector import Detector  # noqa: E402
from tipsomaly.serve.app import create_app  # noqa: E402
from tipsomaly.serve.config import ServeConfig  # noqa: E402

KEYS = ("image_score", "is_anomalous", "threshold", "pixel_threshold", "defects")


@contextmanager
def serving(tmp_path, model, profile):
    device, dtype = resolve_runtime("auto", "auto")
    detector = Detector(model, image_size=SIZE, profile=[profile], device=device,
                        dtype=dtype)  # fmt: skip
    config = ServeConfig(db=str(tmp_path / "r.sqlite"), keep_images=str(tmp_path / "kept"))
    with TestClient(create_app(config, lambda: detector)) as client:
        assert client.app.state.service.wait_ready(30)
        yield client


def score(client, paths) -> list[dict]:
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
    r = client.post("/v1/predict", files=files, data={"class_name": "tile"})
    assert r.status_code == 200, r.text
    return r.json()["results"]


def candidates(folder, n=16) -> list:
    """Normal textures, some under dimmer light (the kind of image a profile flags)."""
    folder.mkdir()
    rng = np.random.default_rng(21)
    out = []
    for i in range(n):
        img = texture(rng, 90, 90).astype(np.float32) * (1.0 - 0.03 * i)
        path = folder / f"cand_{i:02d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path)
        out.append(path)
    return out


def test_a_reviewed_false_alarm_is_not_flagged_after_update_and_reload(serve_data, tmp_path):
    profile = tmp_path / "profile"
    shutil.copytree(serve_data.profile, profile)
    held_out = serve_data.images["tile"]
    pool = candidates(tmp_path / "cands")
    with serving(tmp_path, serve_data.model, profile) as c:
        before = score(c, held_out)
        answers = score(c, pool)
        flagged = [(p, a) for p, a in zip(pool, answers, strict=True) if a["is_anomalous"]]
        assert flagged, [a["image_score"] for a in answers]
        path, alarm = flagged[0]
        r = c.post(f"/v1/records/{alarm['record_id']}/review",
                   json={"verdict": "false_alarm", "reviewer": "ann", "class": "tile"})  # fmt: skip
        assert r.status_code == 200, r.text

        db, kept = str(tmp_path / "r.sqlite"), str(tmp_path / "kept")
        update = ["profile", "update", str(profile), "--from-db", db, "--keep-images", kept]
        assert main([*update, "-q"]) == 0
        assert main([*update, "-q"]) == 2  # nothing new reviewed since this version
        reload = c.post("/v1/profiles/reload").json()
        (entry,) = reload["profiles"]
        assert entry["changed"] and entry["current"]["version"] == 2
        (now,) = score(c, [path])
        assert now["is_anomalous"] is False, now
        record = c.get(f"/v1/records/{now['record_id']}").json()
        assert (record["profile_version"], record["profile_id"]) == (
            2,
            entry["current"]["profile_id"],
        )
        assert 'tipsomaly_profile_version{class_name="tile"} 2.0' in c.get("/metrics").text

        assert main(["profile", "rollback", str(profile), "-q"]) == 0
        back = c.post("/v1/profiles/reload").json()["profiles"][0]
        assert back["current"]["version"] == 3
        assert back["current"]["profile_id"] == entry["previous"]["profile_id"]  # v1's content
        again = score(c, held_out)
        assert [{k: a[k] for k in KEYS} for a in again] == [{k: b[k] for k in KEYS} for b in before]
        (old,) = score(c, [path])
        assert old["is_anomalous"] is True and old["image_score"] == alarm["image_score"]


def test_monitor_reports_each_profiled_class(serve_data, tmp_path):
    with serving(tmp_path, serve_data.model, serve_data.profile) as c:
        results = score(c, serve_data.images["tile"])
        normal = [a for a in results if a["is_anomalous"] is False]
        for a in normal:
            body = {"verdict": "confirmed_normal", "reviewer": "bo"}
            assert c.post(f"/v1/records/{a['record_id']}/review", json=body).status_code == 200
        report = c.get("/v1/monitor").json()
    (tile,) = report["classes"]
    assert tile["class_name"] == "tile" and tile["version"] == 1
    assert (tile["normal_reviewed"], tile["normal_flagged"]) == (len(normal), 0)
    assert tile["n_recent"] == len(results) and tile["n_calibration"] == 6
    assert tile["flag_rate_p"] == 1.0 and isinstance(tile["drifted"], bool)
    assert 0 <= tile["shift_p"] <= 1


def test_monitor_checks_an_export_against_its_calibration_scores(serve_data, tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import json

    from tipsomaly.deploy.inferencers import ExportedDetector
    from tipsomaly.method.profile import Profile

    export = tmp_path / "export"
    assert main(["export", "--profile", str(serve_data.profile), "--format", "onnx",
                 "--out", str(export), "-q"]) == 0  # fmt: skip
    record = json.loads((export / "export.json").read_text())
    profile = Profile.load(serve_data.profile)
    scores = profile.calibration_scores[profile.mode]
    assert record["thresholds"]["calibration"]["scores"] == scores
    detector = ExportedDetector(export)
    config = ServeConfig(db=str(tmp_path / "r.sqlite"))
    with TestClient(create_app(config, lambda: detector)) as c:
        assert c.app.state.service.wait_ready(30)
        results = score(c, serve_data.images["tile"])
        for a in results:
            if a["is_anomalous"] is False:
                body = {"verdict": "confirmed_normal", "reviewer": "bo"}
                assert c.post(f"/v1/records/{a['record_id']}/review", json=body).status_code == 200
        (tile,) = c.get("/v1/monitor").json()["classes"]
    expected = profile.check_drift(
        [a["image_score"] for a in results][::-1],
        sum(a["is_anomalous"] is False for a in results),
        0,
    ).to_dict()
    assert tile["class_name"] == "tile" and tile["n_calibration"] == len(scores) == 6
    assert tile["n_recent"] == len(results)
    for key in ("flag_rate_p", "shift_p", "drifted"):
        assert tile[key] == pytest.approx(expected[key], abs=1e-4), key
