"""Schema versions and faults: a version-1 database (made here by hand, as tipsomaly 0.1 wrote
it) upgraded in place with its records kept; a newer schema and a foreign table refused in one
line; a read-only or full database gives RecordsUnavailableError with nothing written half;
images kept by content; the missing extra named."""

from __future__ import annotations

import hashlib
import sqlite3
import sys

import pytest
from records_helpers import record
from sqlalchemy import create_engine, event, inspect, text

from tipsomaly.errors import MissingExtraError
from tipsomaly.records import RecordsError, RecordsUnavailableError, require_sqlalchemy
from tipsomaly.records.images import ImageStore
from tipsomaly.records.schema import SCHEMA_VERSION
from tipsomaly.records.store import RecordStore, database_url

#: version 1's tables, as they were (no reviews)
V1 = """
CREATE TABLE schema_version (id INTEGER PRIMARY KEY, version INTEGER NOT NULL,
    updated_at FLOAT NOT NULL);
CREATE TABLE records (
    id {id} PRIMARY KEY, time FLOAT NOT NULL, source VARCHAR(16) NOT NULL,
    station VARCHAR(200), filename TEXT, image_sha256 VARCHAR(64) NOT NULL,
    image_kept BOOLEAN NOT NULL, map_sha256 VARCHAR(64), width INTEGER, height INTEGER,
    class_name VARCHAR(200) NOT NULL, profile_id VARCHAR(64), profile_version INTEGER,
    mode VARCHAR(16) NOT NULL, image_score FLOAT, score_cls1 FLOAT, score_cls2 FLOAT,
    threshold FLOAT, threshold_source VARCHAR(16), pixel_threshold FLOAT, is_anomalous BOOLEAN,
    defects {json}, roi VARCHAR(16), identity {json} NOT NULL, latency_ms FLOAT, error TEXT);
CREATE INDEX ix_records_class_id ON records (class_name, id);
INSERT INTO schema_version VALUES (1, 1, 0);
INSERT INTO records (time, source, image_sha256, image_kept, class_name, mode, image_score,
    is_anomalous, identity, defects)
    VALUES (1000, 'serve', 'cd', {false}, 'tile', 'fused', 1.5, {true}, '{{}}', '[]');
"""


def _v1(url: str) -> None:
    engine = create_engine(database_url(url))
    sqlite = engine.dialect.name == "sqlite"
    ddl = V1.format(
        id="INTEGER" if sqlite else "BIGSERIAL",
        json="JSON",
        false="0" if sqlite else "false",
        true="1" if sqlite else "true",
    )
    with engine.begin() as conn:
        for statement in filter(str.strip, ddl.split(";")):
            conn.exec_driver_sql(statement)
    engine.dispose()


def test_a_version_1_database_is_upgraded_in_place(db_url):
    _v1(db_url)
    store = RecordStore(db_url)
    assert (store.found_version, store.version) == (1, SCHEMA_VERSION) == (1, 2)
    columns = {c["name"] for c in inspect(store.engine).get_columns("records")}
    assert {"verdict", "reviewer", "reviewed_at"} <= columns
    assert "reviews" in inspect(store.engine).get_table_names()
    (old,) = store.all_ids()
    assert store.get(old)["image_score"] == 1.5
    got = store.review(old, "false_alarm", "ann")  # the new tables work on the old record
    assert got["reviews"][0]["verdict"] == "false_alarm"
    new = store.add([record()])
    assert new[0] > old
    store.close()
    again = RecordStore(db_url)  # opened again: nothing left to do
    assert (again.found_version, again.version) == (2, 2)
    again.close()


def test_a_newer_schema_is_refused_in_one_line(db_url):
    RecordStore(db_url).close()
    engine = create_engine(database_url(db_url))
    with engine.begin() as conn:
        conn.execute(text("UPDATE schema_version SET version = 7"))
    engine.dispose()
    with pytest.raises(RecordsError) as info:
        RecordStore(db_url)
    message = str(info.value)
    assert "schema version 7 is newer than this tipsomaly's (2); upgrade tipsomaly" in message
    assert "\n" not in message


def test_a_foreign_records_table_is_refused(tmp_path):
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE records (x INTEGER)")
    with pytest.raises(RecordsError, match="not a tipsomaly records database"):
        RecordStore(path)


def test_a_missing_folder_and_a_folder_are_named(tmp_path):
    with pytest.raises(RecordsError, match=r"--db .*nowhere.*: the folder .* does not exist"):
        RecordStore(tmp_path / "nowhere" / "r.sqlite")
    with pytest.raises(RecordsError, match="is a folder"):
        RecordStore(tmp_path)
    assert database_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"


def test_a_read_only_database_refuses_writes_in_one_line(tmp_path):
    path = tmp_path / "r.sqlite"
    RecordStore(path).add([record()])
    ro = RecordStore(f"sqlite:///file:{path}?mode=ro&uri=true")
    with pytest.raises(RecordsUnavailableError) as info:
        ro.add([record(), record()])
    assert "readonly database" in str(info.value) and "\n" not in str(info.value)
    assert len(ro.all_ids()) == 1  # reads still work; nothing was written
    ro.close()


def test_a_full_database_stores_nothing_of_the_batch(tmp_path):
    path = tmp_path / "r.sqlite"
    store = RecordStore(path)
    store.add([record()])
    pages = sqlite3.connect(path).execute("PRAGMA page_count").fetchone()[0]
    store.engine.dispose()

    @event.listens_for(store.engine, "connect")
    def _small(dbapi_conn, _record):  # the disk is full: no page beyond these
        dbapi_conn.execute(f"PRAGMA max_page_count = {pages + 1}")

    big = [record(filename="x" * 4000) for _ in range(20)]
    with pytest.raises(RecordsUnavailableError, match="full"):
        store.add(big)
    assert len(store.all_ids()) == 1
    assert store.integrity_check() == "ok"


def test_images_are_kept_once_by_content(tmp_path):
    images = ImageStore(tmp_path / "kept")
    data = b"\x89PNG fake bytes"
    digest = images.put(data)
    assert digest == hashlib.sha256(data).hexdigest()
    path = images.path(digest)
    mtime = path.stat().st_mtime_ns
    assert images.put(data) == digest and path.stat().st_mtime_ns == mtime  # not rewritten
    assert images.get(digest) == data and images.get("0" * 64) is None
    assert [p.name for p in (tmp_path / "kept").rglob("*") if p.is_file()] == [digest]
    with pytest.raises(ValueError, match="not a SHA-256"):
        images.path("../../etc/passwd")


def test_the_missing_extra_is_named(monkeypatch):
    monkeypatch.setitem(sys.modules, "sqlalchemy", None)
    with pytest.raises(MissingExtraError, match=r"pip install 'tipsomaly\[records\]'"):
        require_sqlalchemy()
