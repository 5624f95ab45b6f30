"""``tipsomaly serve --db`` as a real server on 127.0.0.1 under load, and killed under load.

- load: 32 concurrent clients, 256 requests (one image each, two classes): exactly one record
  per answered request, no duplicate, each equal to its answer; on a SQLite file, and on a real
  PostgreSQL server shared by two replicas (the clients split between them);
- SIGHUP reloads the profiles (as ``POST /v1/profiles/reload``);
- crash: ``kill -9`` of the server while 16 clients send, then a restart on the same SQLite
  file: ``PRAGMA integrity_check`` is ok, every request that got an answer has its record, and
  the restarted server goes on recording.
"""

from __future__ import annotations

import itertools
import signal
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("sqlalchemy")

from serve_helpers import Server, start_server  # noqa: E402

from tipsomaly.records.store import RecordStore  # noqa: E402

SAME = (
    "class_name", "mode", "image_score", "score_cls1", "score_cls2", "threshold",
    "threshold_source", "pixel_threshold", "is_anomalous", "defects", "roi", "error",
)  # fmt: skip


def hammer(servers: list[Server], serve_data, clients: int, per_client: int | None,
           stop: threading.Event | None = None) -> tuple[list[dict], list[str]]:  # fmt: skip
    """``clients`` threads, each with its own keep-alive connection to one of ``servers`` in
    turn, sending one image per request (``per_client`` each, or until ``stop``); the answers
    (each with the station that sent it) and the failures."""
    files = serve_data.files()
    answers: list[dict] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(k: int) -> None:
        url = servers[k % len(servers)].url
        station = f"station-{k}"
        with httpx.Client(timeout=120) as http:
            for i in itertools.count():
                if (per_client is not None and i >= per_client) or (stop and stop.is_set()):
                    return
                cls, path = files[(k * 7 + i) % len(files)]
                try:
                    r = http.post(
                        url + "/v1/predict",
                        files=[("file", (path.name, path.read_bytes(), "image/png"))],
                        data={"class_name": cls},
                        headers={"X-Station-Id": station},
                    )
                except httpx.TransportError as exc:
                    with lock:
                        failures.append(type(exc).__name__)
                    if stop is not None:
                        return
                    continue
                with lock:
                    if r.status_code == 200:
                        answers.append({**r.json()["results"][0], "station": station})
                    else:
                        failures.append(f"{r.status_code} {r.text[:200]}")

    threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    return answers, failures


def check_records(store: RecordStore, answers: list[dict], *, all_of_them: bool = True) -> None:
    ids = [a["record_id"] for a in answers]
    assert None not in ids and len(set(ids)) == len(ids)  # one record each, none shared
    stored = store.all_ids()
    if all_of_them:
        assert stored == sorted(ids)  # no record without its answer
    else:
        assert set(ids) <= set(stored)
    by_id = {r["id"]: r for r in store.query(limit=500)}
    while len(by_id) < len(stored):
        by_id.update({r["id"]: r for r in store.query(limit=500, before_id=min(by_id))})
    for a in answers:
        got = by_id[a["record_id"]]
        assert {k: got[k] for k in SAME} == {k: a[k] for k in SAME}
        assert got["station"] == a["station"] and got["filename"] == a["filename"]


def test_load_sqlite_one_record_per_answer(serve_data, tmp_path):
    db = tmp_path / "records.sqlite"
    server = start_server(serve_data, "--db", str(db), "--max-queue", "64")
    try:
        server.wait_ready()
        answers, failures = hammer([server], serve_data, clients=32, per_client=8)
        server.process.send_signal(signal.SIGHUP)  # reload the profiles, as the endpoint does
        deadline = time.monotonic() + 30
        done = 'tipsomaly_profile_reloads_total{result="done"} 1.0'
        while done not in httpx.get(server.url + "/metrics").text:
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.1)
    finally:
        assert server.stop() == 0, server.output()
    assert failures == []
    assert len(answers) == 256
    store = RecordStore(db)
    check_records(store, answers)
    assert store.integrity_check() == "ok"


def test_load_postgresql_two_replicas_one_record_per_answer(serve_data, postgres):
    url = postgres.create_database()
    replicas = [start_server(serve_data, "--db", url, "--max-queue", "64") for _ in range(2)]
    try:
        for r in replicas:
            r.wait_ready()
        answers, failures = hammer(replicas, serve_data, clients=32, per_client=8)
    finally:
        for r in replicas:
            assert r.stop() == 0, r.output()
    assert failures == []
    assert len(answers) == 256
    check_records(RecordStore(url), answers)


def test_kill_9_under_load_loses_no_answered_record(serve_data, tmp_path):
    db = tmp_path / "records.sqlite"
    server = start_server(serve_data, "--db", str(db), "--max-queue", "64")
    server.wait_ready()
    stop = threading.Event()
    result: dict = {}

    def send() -> None:
        result["answers"], result["failures"] = hammer([server], serve_data, 16, None, stop)

    load = threading.Thread(target=send)
    load.start()
    store = RecordStore(db)
    deadline = time.monotonic() + 120
    while len(store.all_ids()) < 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.process.send_signal(signal.SIGKILL)  # mid-load: requests queued, batches running
    server.process.wait(30)
    stop.set()
    load.join(120)
    answers = result["answers"]
    assert len(answers) >= 50 and result["failures"]  # it was killed under load
    store.close()

    again = start_server(serve_data, "--db", str(db))
    try:
        again.wait_ready()
        store = RecordStore(db)
        assert store.integrity_check() == "ok"
        check_records(store, answers, all_of_them=False)  # a record may outlive its answer
        print(f"kill -9: {len(answers)} answered, {len(result['failures'])} cut off, "
              f"{len(store.all_ids())} records after the restart")  # fmt: skip
        before = max(store.all_ids())
        more, failures = hammer([again], serve_data, clients=2, per_client=2)
        assert failures == [] and min(a["record_id"] for a in more) > before
    finally:
        assert again.stop() == 0, again.output()
