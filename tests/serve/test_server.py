"""``tipsomaly serve`` as a process: real uvicorn on 127.0.0.1, real sockets, real signals.

Concurrent clients must get exactly the CLI's scores while sharing forward passes; refusals
must arrive as answers (not reset connections); SIGTERM must let a request in flight finish
with 200 and the process exit 0.
"""

from __future__ import annotations

import random
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("multipart")

from serve_helpers import TOKEN  # noqa: E402

from tipsomaly.cli.main import main  # noqa: E402

TOL = 1e-6
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def post(url, paths, cls, headers=AUTH, timeout=60.0, client=httpx, **data):
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
    return client.post(
        url + "/v1/predict",
        files=files,
        data={"class_name": cls, **data},
        headers=headers,
        timeout=timeout,
    )


def test_concurrent_clients_get_exactly_the_cli_scores(server, serve_data):
    before = httpx.get(server.url + "/v1/info", headers=AUTH).json()["stats"]
    jobs = []
    rng = random.Random(0)
    pairs = serve_data.files()
    for client in range(32):
        for _ in range(3):  # 1–3 images of one class per request
            cls, _ = rng.choice(pairs)
            paths = rng.sample(serve_data.images[cls], rng.randint(1, 3))
            jobs.append((client, cls, paths))

    limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
    with httpx.Client(limits=limits) as http, ThreadPoolExecutor(32) as pool:

        def run(job):
            _, cls, paths = job
            return cls, paths, post(server.url, paths, cls, client=http)

        answers = list(pool.map(run, jobs))
    compared = exact = 0
    for cls, paths, r in answers:
        assert r.status_code == 200, r.text
        results = r.json()["results"]
        assert [x["filename"] for x in results] == [p.name for p in paths]
        for x in results:
            cli = serve_data.cli[x["filename"]]
            assert x["image_score"] == pytest.approx(cli["image_score"], abs=TOL)
            assert x["score_cls2"] == pytest.approx(cli["score_cls2"], abs=TOL)
            assert x["is_anomalous"] == cli.get("is_anomalous")
            assert x["mode"] == ("fused" if cls == "tile" else "zero-shot")
            compared += 1
            exact += x["image_score"] == cli["image_score"]
    after = httpx.get(server.url + "/v1/info", headers=AUTH).json()["stats"]
    images = after["images"] - before["images"]
    forwards = after["forwards"] - before["forwards"]
    assert images == compared == sum(len(p) for _, _, p in jobs)  # none lost, none twice
    assert forwards < images / 2, after  # concurrent requests shared forward passes
    print(f"{compared} answers, {exact} bit-identical to the CLI, {images / forwards:.2f} img/fwd")


def test_refusals_over_real_sockets_and_the_server_stays_up(server, serve_data):
    good = serve_data.images["screw"][:1]
    r = post(server.url, good, "screw", headers={})
    assert r.status_code == 401 and "Bearer" in r.headers["www-authenticate"]
    big = [("file", ("big.png", b"\0" * (2 * 2**20), "image/png"))]  # the server takes 1 MiB
    r = httpx.post(server.url + "/v1/predict", files=big, headers=AUTH, timeout=30)
    assert r.status_code == 413 and "1 MiB" in r.json()["detail"]
    bad = [("file", ("x.png", b"GIF89a broken", "image/png"))]
    r = httpx.post(server.url + "/v1/predict", files=bad, data={"class_name": "tile"},
                   headers=AUTH, timeout=30)  # fmt: skip
    assert r.status_code == 422 and r.json()["errors"][0]["filename"] == "x.png"
    r = post(server.url, good, "screw")
    assert r.status_code == 200
    assert r.json()["results"][0]["image_score"] == pytest.approx(
        serve_data.cli[good[0].name]["image_score"], abs=TOL
    )
    assert server.process.poll() is None


def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(drain_server, serve_data):
    srv = drain_server  # its batches wait up to 1.5 s to fill: the request stays in flight
    path = serve_data.images["tile"][4]
    answer: dict[str, httpx.Response] = {}
    sender = threading.Thread(
        target=lambda: answer.setdefault("r", post(srv.url, [path], "tile", headers={}))
    )
    sender.start()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if httpx.get(srv.url + "/v1/info").json()["stats"].get("queued"):
            break
        time.sleep(0.02)
    else:
        pytest.fail("the request never reached the queue")
    srv.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    host, port = srv.url.removeprefix("http://").split(":")
    with pytest.raises(OSError), socket.create_connection((host, int(port)), timeout=2):
        pass  # no new connections once stopping
    sender.join(30)
    r = answer["r"]
    assert r.status_code == 200
    assert r.json()["results"][0]["image_score"] == pytest.approx(
        serve_data.cli[path.name]["image_score"], abs=TOL
    )
    assert srv.process.wait(30) == 0, srv.output()
    assert "stopped (requests in flight were answered)" in srv.output()


# -- the command's own errors -------------------------------------------------------------------
def test_a_busy_port_is_one_line_and_exit_1(serve_data, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        code = main(["serve", "--model", str(serve_data.model), "--image-size", "70",
                     "--port", str(port)])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"tipsomaly: error: --host 127.0.0.1 --port {port}: cannot listen")
    assert len(err.splitlines()) == 1


def test_mode_needs_a_profile(serve_data, capsys):
    code = main(["serve", "--model", str(serve_data.model), "--mode", "fused"])
    assert code == 1
    assert "--mode needs --profile" in capsys.readouterr().err


def test_without_the_extra_the_message_names_it(serve_data, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a)
    )
    assert main(["serve", "--model", str(serve_data.model)]) == 1
    err = capsys.readouterr().err
    assert "needs uvicorn (not installed): pip install 'tipsomaly[serve]'" in err
