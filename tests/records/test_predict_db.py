"""``tipsomaly predict --db``: one record per scored image, equal to its row of scores.json, with
the profile version that decided it; images kept by content; a database that cannot be used
stops the run before the model loads, in one line."""

from __future__ import annotations

import hashlib
import json

from sqlalchemy import create_engine, text

from synthetic import tiny_model_dir
from tipsomaly.cli.main import main
from tipsomaly.method.profile import Profile, profile_digest
from tipsomaly.records.store import RecordStore, database_url

SIZE = "70"


def _images(folder, n, seed, defect=False):
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        img = (rng.random((84, 84, 3)) * 255).astype(np.uint8)
        if defect:
            img[20:40, 30:50] = 10
        path = folder / f"{folder.name}_{i}.png"
        Image.fromarray(img).save(path)
        out.append(path)
    return out


def test_predict_db_records_every_row(tmp_path, db_url):
    model = ["--model", str(tiny_model_dir(tmp_path / "model")), "--image-size", SIZE, "-q"]
    refs = _images(tmp_path / "refs", 4, 1)
    profile = tmp_path / "profile"
    assert (
        main(["fit", *map(str, refs), "--class-name", "tile", "--out", str(profile), *model]) == 0
    )
    images = _images(tmp_path / "ok", 3, 2) + _images(tmp_path / "dent", 2, 3, defect=True)
    out, kept = tmp_path / "out", tmp_path / "kept"
    args = ["predict", *map(str, images), "--profile", str(profile), "--class-name", "tile",
            "--out", str(out), "--db", db_url, "--keep-images", str(kept), *model]  # fmt: skip
    assert main(args) == 0
    rows = json.loads((out / "scores.json").read_text())["results"]
    store = RecordStore(db_url)
    records = sorted(store.query(limit=50), key=lambda r: r["id"])
    assert len(records) == len(rows) == len(images)
    digest = profile_digest(Profile.load(profile))
    for row, rec, path in zip(rows, records, images, strict=True):
        assert rec["filename"] == str(path) and rec["source"] == "predict"
        assert rec["image_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert (rec["image_score"], rec["is_anomalous"]) == (
            row["image_score"],
            row["is_anomalous"],
        )
        assert rec["threshold"] == row["threshold"] and rec["defects"] == row["defects"]
        assert (rec["profile_id"], rec["profile_version"]) == (digest, 1)
        assert (
            kept / rec["image_sha256"][:2] / rec["image_sha256"]
        ).read_bytes() == path.read_bytes()
        assert rec["map_sha256"] is not None and [rec["height"], rec["width"]] == [84, 84]
    store.close()


def test_a_newer_database_stops_predict_before_scoring(tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    RecordStore(db).close()
    engine = create_engine(database_url(str(db)))
    with engine.begin() as conn:
        conn.execute(text("UPDATE schema_version SET version = 9"))
    engine.dispose()
    image = _images(tmp_path / "imgs", 1, 4)[0]
    model = str(tiny_model_dir(tmp_path / "model"))
    out = str(tmp_path / "out")
    code = main(["predict", str(image), "--class-name", "tile", "--model", model,
                 "--image-size", SIZE, "--out", out, "--db", str(db), "-q"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and "schema version 9 is newer than this tipsomaly's (2)" in err[0]
    assert not (tmp_path / "out" / "scores.csv").exists()
