"""Load test of ``tipsomaly serve``: concurrent clients, latency, batching, and correctness.

    python benchmarks/serve_load.py                     # 32 clients, 3 rounds × 4 requests each
    python benchmarks/serve_load.py --rounds 1 --clients 8      # quicker
    python benchmarks/serve_load.py --records           # the cost of recording (serve --db)

Starts two ``tipsomaly serve`` processes on free ports of 127.0.0.1 (the tiny golden model of
``tests/fixtures/golden/tips-tiny`` unless ``--model``, ``--image-size`` 70), alike but for
batching: one micro-batched (``--batch-size``, ``--max-wait-ms``), one with one request per
forward (``--batch-size 1 --max-wait-ms 0``). In each of ``--rounds`` rounds, each server in turn
gets ``--clients`` threads sending ``--requests`` requests each (one image per request,
keep-alive connections, no pause); alternating the two in rounds exposes both to the same
machine load (a shared machine's other jobs move the numbers a lot). Printed per server:
throughput (median over the rounds, and each round), p50/p95/p99 latency over all requests,
how many images shared a forward (the server's own counters, ``GET /v1/info``), refused or
failed requests, and whether every answer equals ``tipsomaly predict``'s score for that image
(run once, before, on the same files; bit-identical required). Then the throughput ratio,
checked against ``--min-speedup`` (1.5).

Bounded: each request times out after 120 s, the whole run after ``--timeout`` seconds; the
servers are stopped with SIGTERM and must exit 0. Exit status: 0 all answered right and the
speed-up reached, 1 a lost, refused or wrong answer or a server that did not stop cleanly, 2
the speed-up not reached.

``--records``: the cost of recording instead. Three micro-batched servers, alike but for
``--db``: none, a SQLite file, and a PostgreSQL database (``--postgres URL``, else a server
started in a temporary folder as the tests start one: tests/pg_server.py; left out, saying why,
where none can run). Printed: p50/p95 latency of each and the p50 cost of recording against
the server without records, measured in the same rounds; each database must hold exactly one
record per answered request. Exit status 2 when the SQLite cost is over ``--max-record-cost``
(5 % of p50). Images are generated textures (a dark square on every fourth); the
tiny model's weights are random, so the scores test the plumbing, not accuracy.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = ROOT / "tests" / "fixtures" / "golden" / "tips-tiny"
CLASS = "tile"


def model_dir(dest: Path) -> Path:
    """The golden tiny model as a model directory (as tests/synthetic.py builds it)."""
    config = json.loads((GOLDEN / "golden.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("vision.npz", "text.npz", "tokenizer.model"):
        shutil.copy(GOLDEN / name, dest / name)
    description = {
        "vision": {**config["vision"], "npz": "vision.npz"},
        "text": {**config["text"], "npz": "text.npz", "tokenizer": "tokenizer.model"},
    }
    (dest / "model.json").write_text(json.dumps(description))
    return dest


def images(folder: Path, n: int, size: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        base = rng.random((size // 6 + 1, size // 6 + 1))
        img = np.kron(base, np.ones((6, 6)))[:size, :size] * 0.6 + 0.4 * rng.random((size, size))
        arr = (np.stack([img, img * 0.95, img * 0.85], -1) * 255).astype(np.uint8)
        if i % 4 == 3:
            arr[size // 4 : size // 2, size // 3 : size // 2] = 10
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(arr).save(path)
        out.append(path)
    return out


def cli() -> list[str]:
    beside = Path(sys.executable).with_name("tipsomaly")
    return [str(beside)] if beside.exists() else [sys.executable, "-m", "tipsomaly"]


def cli_scores(files: list[Path], model: Path, size: int, out: Path) -> dict[str, float]:
    cmd = [*cli(), "predict", *map(str, files), "--class-name", CLASS, "--model", str(model),
           "--image-size", str(size), "--out", str(out), "--no-overlays", "-q"]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=600, stdout=subprocess.DEVNULL)
    rows = json.loads((out / "scores.json").read_text())["results"]
    return {Path(r["path"]).name: r["image_score"] for r in rows}


# -- HTTP --------------------------------------------------------------------------------------
def multipart(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="class_name"\r\n\r\n{CLASS}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
        f'filename="{path.name}"\r\nContent-Type: image/png\r\n\r\n'
    ).encode()
    body = head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def send(conn: http.client.HTTPConnection, payload: tuple[bytes, str]) -> tuple[int, dict]:
    body, content_type = payload
    conn.request("POST", "/v1/predict", body=body, headers={"Content-Type": content_type})
    r = conn.getresponse()
    data = r.read()
    return r.status, json.loads(data) if data else {}


def get_json(port: int, path: str) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, json.loads(r.read() or b"{}")
    finally:
        conn.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- one server under load -----------------------------------------------------------------------
@dataclass
class Server:
    name: str
    extra: list[str]
    port: int = 0
    process: subprocess.Popen | None = None
    log: Path | None = None
    rates: list[float] = field(default_factory=list)  # images/s, one per round
    latencies: list[float] = field(default_factory=list)
    alone: list[float] = field(default_factory=list)  # --records: one request at a time
    record_ms: list[float] = field(default_factory=list)  # the server's own timing.record_ms
    failures: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    answered: int = 0
    sent: int = 0
    sizes: dict[str, int] = field(default_factory=dict)  # images per forward → forwards
    exit_code: int | None = None

    def start(self, args, model: Path, folder: Path) -> None:
        self.port = free_port()
        self.log = folder / f"{self.name.replace(' ', '-')}.log"
        cmd = [*cli(), "serve", "--model", str(model), "--image-size", str(args.image_size),
               "--classes", CLASS, "--port", str(self.port),
               "--max-queue", str(max(64, args.clients)), "-q", *self.extra]  # fmt: skip
        with self.log.open("wb") as out:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180) -> None:
        assert self.process is not None and self.log is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                if get_json(self.port, "/health")[0] == 200:
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"{self.name}: no server:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.exit_code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.exit_code = self.process.wait()

    def counters(self) -> dict[str, int]:
        return get_json(self.port, "/v1/info")[1]["stats"]["batch_sizes"]

    def round(self, args, files, bodies, expected) -> None:
        """``--clients`` threads × ``--requests`` requests; adds to the totals."""
        before = self.counters()
        lock = threading.Lock()
        answered = [0]

        def client(index: int) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
            for k in range(args.requests):
                path = files[(index * args.requests + k + len(self.rates)) % len(files)]
                start = time.perf_counter()
                try:
                    status, body = send(conn, bodies[path.name])
                except (OSError, http.client.HTTPException) as exc:
                    with lock:
                        self.failures.append(f"{path.name}: {type(exc).__name__}: {exc}")
                    conn.close()
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                    continue
                elapsed = time.perf_counter() - start
                with lock:
                    if status != 200:
                        self.failures.append(f"{path.name}: HTTP {status} {body!r:.200}")
                        continue
                    self.latencies.append(elapsed)
                    answered[0] += 1
                    got = body["results"][0]["image_score"]
                    if got != expected[path.name]:
                        self.wrong.append(f"{path.name}: {got!r} != CLI {expected[path.name]!r}")
            conn.close()

        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(1.0, args.deadline - time.monotonic()))
        seconds = time.perf_counter() - start
        if any(t.is_alive() for t in threads):
            self.failures.append("--timeout passed with requests unanswered")
        self.sent += args.clients * args.requests
        self.answered += answered[0]
        self.rates.append(answered[0] / seconds)
        for size, count in self.counters().items():
            done = count - before.get(size, 0)
            if done:
                self.sizes[size] = self.sizes.get(size, 0) + done


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


def report(s: Server) -> None:
    forwards = sum(s.sizes.values())
    images_ = sum(int(k) * v for k, v in s.sizes.items())
    hist = ", ".join(f"{k}x{v}" for k, v in sorted(s.sizes.items(), key=lambda kv: -int(kv[0])))
    rounds = " ".join(f"{r:.1f}" for r in s.rates)
    print(
        f"  {s.name:15s} {statistics.median(s.rates):6.1f} img/s (rounds: {rounds})  "
        f"latency p50 {percentile(s.latencies, 50):.0f} ms, p95 "
        f"{percentile(s.latencies, 95):.0f}, p99 {percentile(s.latencies, 99):.0f}"
    )
    lost = s.sent - s.answered - len(s.failures)
    print(
        f"  {'':15s} {s.answered}/{s.sent} answered, refused/failed {len(s.failures)}, "
        f"lost {lost}, wrong {len(s.wrong)}; {forwards} forwards, "
        f"{images_ / max(forwards, 1):.2f} images per forward (size x forwards: {hist}); "
        f"exit {s.exit_code}"
    )
    for line in (s.failures + s.wrong)[:5]:
        print(f"    {line}")


def one_at_a_time(servers: list[Server], files, bodies, n: int) -> None:
    """``n`` requests to each server, one at a time, taking turns request by request (so each
    sees the same machine load): the latency of a request that waits for no other."""
    conns = [http.client.HTTPConnection("127.0.0.1", s.port, timeout=120) for s in servers]
    for i in range(n):
        body = bodies[files[i % len(files)].name]
        turn = i % len(servers)  # who goes first changes: none always follows the same one
        for s, conn in (
            list(zip(servers, conns, strict=True))[turn:]
            + list(zip(servers, conns, strict=True))[:turn]
        ):
            start = time.perf_counter()
            status, answer = send(conn, body)
            if status == 200:
                s.alone.append(time.perf_counter() - start)
                if answer["timing"].get("record_ms") is not None:
                    s.record_ms.append(answer["timing"]["record_ms"] / 1000)
                s.answered += 1
            else:
                s.failures.append(f"HTTP {status} one at a time")
            s.sent += 1
    for conn in conns:
        conn.close()


def record_counts(servers: list[Server], dbs: dict[str, str]) -> list[str]:
    """Each recording server's database must hold one record per answer (and warm-up)."""
    sys.path.insert(0, str(ROOT / "src"))
    from tipsomaly.records.store import RecordStore

    problems = []
    for s in servers:
        if s.name in dbs:
            store = RecordStore(dbs[s.name])
            n = len(store.all_ids())
            store.close()
            want = s.answered + WARM_UP
            print(f"  {s.name:15s} {n} records for {want} answers (warm-up included)")
            if n != want:
                problems.append(f"{s.name}: {n} records for {want} answers")
    return problems


def postgres_url(args, cleanup: list) -> str | None:
    if args.postgres:
        return args.postgres
    sys.path.insert(0, str(ROOT / "tests"))
    import pg_server

    server = pg_server.start()
    if isinstance(server, str):
        print(f"  (PostgreSQL left out: {server})")
        return None
    cleanup.append(server.stop)
    return server.create_database()


#: requests each server gets before the rounds (not counted)
WARM_UP = 4


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, help="model directory (default: the tiny golden model)")
    p.add_argument("--image-size", type=int, default=70)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--requests", type=int, default=4, help="requests per client and round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--images", type=int, default=32, help="distinct images sent")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-wait-ms", type=float, default=10.0)
    p.add_argument("--min-speedup", type=float, default=1.5)
    p.add_argument("--timeout", type=float, default=900.0, help="seconds for the whole run")
    p.add_argument("--records", action="store_true", help="measure the cost of serve --db")
    p.add_argument("--postgres", metavar="URL", help="--records: this PostgreSQL database")
    p.add_argument("--max-record-cost", type=float, default=5.0, metavar="PERCENT")
    p.add_argument(
        "--alone", type=int, default=100, metavar="N",
        help="--records: requests per server sent one at a time (the p50 compared)",
    )  # fmt: skip
    args = p.parse_args()
    args.deadline = time.monotonic() + args.timeout
    batching = ["--batch-size", str(args.batch_size), "--max-wait-ms", str(args.max_wait_ms)]
    servers = [
        Server("micro-batched" if not args.records else "no records", batching),
        Server("one per forward", ["--batch-size", "1", "--max-wait-ms", "0"]),
    ]
    dbs: dict[str, str] = {}
    cleanup: list = []
    with tempfile.TemporaryDirectory(prefix="tipsomaly-serve-load-") as tmp:
        t = Path(tmp)
        model = args.model or model_dir(t / "model")
        files = images(t / "images", args.images, 96)
        if args.records:
            dbs["sqlite"] = str(t / "records.sqlite")
            url = postgres_url(args, cleanup)
            if url is not None:
                dbs["postgresql"] = url
            servers = servers[:1] + [Server(k, [*batching, "--db", v]) for k, v in dbs.items()]
        try:
            for s in servers:  # they load while the CLI scores the images
                s.start(args, model, t)
            expected = cli_scores(files, model, args.image_size, t / "cli")
            for s in servers:
                s.wait_ready()
            print(
                f"tipsomaly serve under load: {args.clients} clients x {args.requests} requests "
                f"x {args.rounds} rounds per server (1 image each), model {model.name}, "
                f"{args.image_size} px, {os.cpu_count()} CPU(s); answers checked against "
                f"`tipsomaly predict` on the same {len(files)} images"
            )
            bodies = {f.name: multipart(f) for f in files}
            for s in servers:  # warm-up, not counted
                conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=120)
                for f in files[:WARM_UP]:
                    send(conn, bodies[f.name])
                conn.close()
            if args.records:
                one_at_a_time(servers, files, bodies, args.alone)
            for _ in range(args.rounds):
                for s in servers:
                    s.round(args, files, bodies, expected)
        finally:
            for s in servers:
                s.stop()
        for s in servers:
            report(s)
        if args.records:
            problems = record_counts(servers, dbs)
            for stop in cleanup:
                stop()
            return records_verdict(args, servers, problems)
    batched, single = servers
    speedup = statistics.median(batched.rates) / statistics.median(single.rates)
    per_round = " ".join(f"{a / b:.2f}" for a, b in zip(batched.rates, single.rates, strict=True))
    print(
        f"  micro-batching: {speedup:.2f}x the throughput of one request per forward "
        f"(medians; per round: {per_round}; --batch-size {args.batch_size}, --max-wait-ms "
        f"{args.max_wait_ms:g}; required >= {args.min_speedup:g})"
    )
    if any(s.failures or s.wrong or s.answered != s.sent or s.exit_code != 0 for s in servers):
        print("FAIL: lost, refused or wrong answers, or a server that did not exit 0")
        return 1
    if speedup < args.min_speedup:
        print("FAIL: micro-batching below the required speed-up")
        return 2
    print("OK: every answer equals the CLI's score; no request lost or refused")
    return 0


def records_verdict(args, servers: list[Server], problems: list[str]) -> int:
    """The cost of recording: p50 of the one-at-a-time requests (a loaded server's latency is
    mostly queueing, which moves with the machine's other load more than recording moves it)."""
    base = percentile(servers[0].alone, 50)
    for s in servers:
        print(
            f"  one at a time, {s.name:11s}: p50 {percentile(s.alone, 50):.2f} ms, p95 "
            f"{percentile(s.alone, 95):.2f} ms ({len(s.alone)} requests)"
        )
    for s in servers[1:]:
        p50, own = percentile(s.alone, 50), percentile(s.record_ms, 50)
        print(
            f"  recording cost, {s.name}: p50 {p50:.2f} ms against {base:.2f} ms without "
            f"records: {p50 - base:+.2f} ms ({100 * (p50 - base) / base:+.1f} % of p50); the "
            f"server's own timing.record_ms p50 {own:.2f} ms ({100 * own / base:.1f} % of p50)"
        )
    # the verdict on the server's own measure: the A/B difference of two p50s on a shared
    # machine moves by more than recording costs (both are printed)
    cost = 100 * percentile(servers[1].record_ms, 50) / base
    if problems or any(s.failures or s.wrong or s.answered != s.sent or s.exit_code != 0
                       for s in servers):  # fmt: skip
        print("FAIL: lost, refused or wrong answers, a record count off, or a bad exit")
        return 1
    if cost > args.max_record_cost:
        print(f"FAIL: recording to SQLite costs {cost:.1f} % of p50 (> {args.max_record_cost:g})")
        return 2
    print(f"OK: one record per answer; SQLite recording costs {cost:+.1f} % of p50")
    return 0


if __name__ == "__main__":
    sys.exit(main())
