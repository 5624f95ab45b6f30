"""The records store against real databases (a SQLite file, a PostgreSQL server): what goes in
comes back, filters and pages, reviews and their refusals, the drift check's inputs, and many
writers at once."""

from __future__ import annotations

import threading

import pytest
from records_helpers import record

from tipsomaly.errors import InvalidOptionError
from tipsomaly.records import RecordNotFoundError, ReviewConflictError
from tipsomaly.records.store import RecordStore


def test_a_record_comes_back_as_written(store):
    defects = [{"id": 1, "bbox": [3, 4, 20, 30], "area_px": 120, "peak": 0.9, "mean": 0.6}]
    written = record(
        station="cam-2", filename="a.png", is_anomalous=True, image_score=1.25, defects=defects,
        width=96, height=84, latency_ms=12.5, error=None,
    )  # fmt: skip
    (rid,) = store.add([written])
    got = store.get(rid)
    for key, value in written.items():
        assert got[key] == value, key
    assert got["verdict"] is None and got["reviews"] == []
    assert got["time"].endswith("+00:00") and got["epoch"] > 1.7e9


def test_ids_are_new_and_in_order_and_a_batch_is_all_or_nothing(store):
    ids = store.add([record(image_score=i / 10) for i in range(5)])
    assert ids == sorted(ids) and len(set(ids)) == 5
    assert [store.get(i)["image_score"] for i in ids] == [i / 10 for i in range(5)]
    with pytest.raises(ValueError, match="unknown record fields: nope"):
        store.add([record(), record(nope=1)])
    assert store.all_ids() == ids


def test_filters_and_pages(store):
    store.add([record(is_anomalous=True, station="a", time=100.0)])
    store.add([record(is_anomalous=False, station="b", time=200.0)])
    store.add([record(is_anomalous=True, station="b", class_name="screw", time=300.0)])
    ids = store.all_ids()

    def found(**kw):
        return [r["id"] for r in store.query(**kw)]

    assert found() == ids[::-1]
    assert found(outcome="anomalous") == [ids[2], ids[0]]
    assert found(outcome="normal") == [ids[1]]
    assert found(station="b") == [ids[2], ids[1]]
    assert found(class_name="screw") == [ids[2]]
    assert found(since=150, until=300) == [ids[1]]
    assert found(limit=2) == [ids[2], ids[1]]
    assert found(limit=2, before_id=ids[1]) == [ids[0]]
    store.review(ids[0], "false_alarm", "ann")
    assert found(unreviewed=True) == [ids[2], ids[1]]
    with pytest.raises(InvalidOptionError, match="outcome"):
        store.query(outcome="maybe")


def test_a_review_is_stored_with_its_history(store):
    (rid,) = store.add([record(is_anomalous=True)])
    store.review(rid, "confirmed_defect", "ann")
    got = store.review(rid, "false_alarm", " bob ", class_name="tile")
    assert (got["verdict"], got["reviewer"]) == ("false_alarm", "bob")
    assert [(r["verdict"], r["reviewer"]) for r in got["reviews"]] == [
        ("confirmed_defect", "ann"),
        ("false_alarm", "bob"),
    ]
    assert got["reviewed_at"] is not None


def test_reviews_that_do_not_fit_are_refused_and_change_nothing(store):
    flagged, passed, undecided = store.add(
        [record(is_anomalous=True), record(is_anomalous=False), record(is_anomalous=None)]
    )
    with pytest.raises(RecordNotFoundError, match=r"^no record 999999 in "):
        store.review(999999, "false_alarm", "ann")
    with pytest.raises(ReviewConflictError, match="is of class 'tile', not 'screw'"):
        store.review(flagged, "false_alarm", "ann", class_name="screw")
    with pytest.raises(ReviewConflictError, match="was flagged: its verdict is one of"):
        store.review(flagged, "missed_defect", "ann")
    with pytest.raises(ReviewConflictError, match="was passed"):
        store.review(passed, "false_alarm", "ann")
    with pytest.raises(ReviewConflictError, match="has no decision"):
        store.review(undecided, "confirmed_normal", "ann")
    with pytest.raises(InvalidOptionError, match="verdict"):
        store.review(flagged, "looks fine", "ann")
    with pytest.raises(InvalidOptionError, match="reviewer"):
        store.review(flagged, "false_alarm", "  ")
    for rid in (flagged, passed, undecided):
        assert store.get(rid)["reviews"] == [] and store.get(rid)["verdict"] is None
    with pytest.raises(RecordNotFoundError):
        store.get(999999)


def test_monitor_inputs_count_the_current_versions_reviews(store):
    scores = [0.1, 0.2, 0.9, 0.3]
    ids = store.add([record(image_score=s, is_anomalous=s > 0.8) for s in scores])
    store.add([record(image_score=5.0, profile_id="old")])  # another version: not counted
    store.review(ids[2], "false_alarm", "ann")  # flagged, normal
    store.review(ids[0], "confirmed_normal", "ann")
    store.review(ids[1], "missed_defect", "ann")  # a defect: left out of the scores
    recent, reviewed, flagged = store.monitor_inputs("tile", profile_id="p1", mode="fused")
    assert recent == [0.1, 0.9, 0.3]
    assert (reviewed, flagged) == (2, 1)
    assert store.monitor_inputs("tile", profile_id="p1", mode="fused", recent=1)[0] == [0.3]
    normal = store.reviewed_normal("tile", kept_only=False)
    assert [r["id"] for r in normal] == [ids[0], ids[2]]
    assert store.reviewed_normal("tile") == []  # no image kept


def test_many_writers_at_once_get_distinct_ids(db_url):
    """8 threads × 25 single-record transactions on one store, and a second store (another
    replica's connection pool) writing meanwhile: every record once, none lost."""
    stores = [RecordStore(db_url), RecordStore(db_url)]
    got: list[int] = []
    lock = threading.Lock()

    def write(k: int) -> None:
        for i in range(25):
            (rid,) = stores[k % 2].add([record(filename=f"{k}-{i}")])
            with lock:
                got.append(rid)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == len(set(got)) == 200
    assert sorted(got) == stores[0].all_ids()
    names = {r["filename"] for r in stores[1].query(limit=500)}
    assert names == {f"{k}-{i}" for k in range(8) for i in range(25)}
    assert stores[0].integrity_check() == "ok"
    for s in stores:
        s.close()
