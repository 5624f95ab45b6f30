"""The weights cache against a local HTTP server: resume, checksums, atomic rename."""

from __future__ import annotations

import hashlib
import http.server
import threading
from pathlib import Path

import pytest

from tipsomaly.tips import weights
from tipsomaly.tips.weights import (
    ChecksumError,
    ChecksumRegistry,
    WeightsUnavailableError,
    download,
    fetch,
)

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB, not a multiple of the download chunk boundaries


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD; ``cut_after`` drops the connection after that many bytes of a response."""

    cut_after: int | None = None
    honour_range = True
    requests: list[dict] = []

    def log_message(self, *args) -> None:
        """Silence the per-request log lines (keeps test output clean)."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        start = 0
        rng = self.headers.get("Range")
        type(self).requests.append({"path": self.path, "range": rng})
        if self.path != "/file.bin":
            self.send_error(404)
            return
        if rng and self.honour_range:
            start = int(rng.split("=")[1].split("-")[0])
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.cut_after is not None:
            self.wfile.write(body[: self.cut_after])
            self.wfile.flush()
            self.connection.shutdown(2)  # the network drops mid-file
            return
        self.wfile.write(body)


@pytest.fixture
def server():
    _Handler.cut_after = None
    _Handler.honour_range = True
    _Handler.requests = []
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler
    httpd.shutdown()
    httpd.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_complete_download_records_checksum(server, tmp_path):
    base, _ = server
    dest = tmp_path / "w" / "file.bin"
    got = fetch(f"{base}/file.bin", dest, offline=False, progress=False)
    assert got == dest and dest.read_bytes() == PAYLOAD
    assert not dest.with_name("file.bin.part").exists()
    assert ChecksumRegistry(dest.parent).get("file.bin") == _sha(PAYLOAD)


def test_cut_download_leaves_no_final_file_then_resumes(server, tmp_path):
    base, handler = server
    dest = tmp_path / "file.bin"
    handler.cut_after = 300_000
    with pytest.raises(WeightsUnavailableError) as info:
        fetch(f"{base}/file.bin", dest, offline=False, progress=False)
    assert f"{base}/file.bin" in str(info.value) and str(dest) in str(info.value)
    assert not dest.exists(), "a cut download must not appear under the final name"
    part = dest.with_name("file.bin.part")
    assert 0 < part.stat().st_size < len(PAYLOAD)
    kept = part.stat().st_size

    handler.cut_after = None
    fetch(f"{base}/file.bin", dest, offline=False, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert not part.exists()
    assert handler.requests[-1]["range"] == f"bytes={kept}-", "the second request must resume"


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    base, handler = server
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(b"garbage that is not the file's start")
    handler.honour_range = False
    fetch(f"{base}/file.bin", dest, offline=False, progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_complete_part_is_finished_on_416(server, tmp_path):
    base, _ = server
    dest = tmp_path / "file.bin"
    dest.with_name("file.bin.part").write_bytes(PAYLOAD)
    assert download(f"{base}/file.bin", dest, progress=False) == _sha(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD


def test_checksum_mismatch_is_refused_and_leaves_nothing(server, tmp_path):
    base, _ = server
    dest = tmp_path / "cache" / "file.bin"
    with pytest.raises(ChecksumError, match="expected"):
        fetch(f"{base}/file.bin", dest, offline=False, progress=False, expected_sha256="0" * 64)
    assert not dest.exists()
    assert list(dest.parent.glob("file.bin*")) == []
    assert ChecksumRegistry(dest.parent).get("file.bin") is None


def test_later_load_detects_a_changed_file(server, tmp_path):
    base, _ = server
    dest = tmp_path / "file.bin"
    fetch(f"{base}/file.bin", dest, offline=False, progress=False)
    fetch(f"{base}/file.bin", dest, offline=True, progress=False)  # verified, no network needed
    dest.write_bytes(PAYLOAD[:-1] + b"\x00")
    with pytest.raises(ChecksumError, match=str(dest)):
        fetch(f"{base}/file.bin", dest, offline=True, progress=False)


def test_hand_placed_file_is_recorded_then_verified(tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(PAYLOAD)
    fetch("http://127.0.0.1:9/never-contacted", dest, offline=True)
    assert ChecksumRegistry(tmp_path).get("file.bin") == _sha(PAYLOAD)


def test_offline_error_names_url_and_path(tmp_path):
    dest = tmp_path / "sub" / "x.npz"
    url = "https://example.invalid/x.npz"
    with pytest.raises(WeightsUnavailableError) as info:
        fetch(url, dest, offline=True)
    assert url in str(info.value) and str(dest) in str(info.value)
    assert not dest.exists()


def test_unreachable_server_error_names_url_and_path(tmp_path):
    dest = tmp_path / "x.npz"
    url = "http://127.0.0.1:9/x.npz"  # discard port: connection refused
    with pytest.raises(WeightsUnavailableError) as info:
        fetch(url, dest, offline=False, progress=False)
    assert url in str(info.value) and str(dest) in str(info.value)


def test_cache_dir_follows_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TIPSOMALY_HOME", str(tmp_path / "home"))
    assert weights.weights_dir() == tmp_path / "home" / "weights"
    monkeypatch.delenv("TIPSOMALY_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    if weights.sys.platform.startswith("linux"):
        assert weights.cache_dir() == tmp_path / "xdg" / "tipsomaly"


def test_offline_mode_from_environment(monkeypatch):
    monkeypatch.delenv("TIPSOMALY_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert not weights.offline_mode()
    monkeypatch.setenv("TIPSOMALY_OFFLINE", "1")
    assert weights.offline_mode()


def test_registry_survives_a_corrupt_file(tmp_path):
    (tmp_path / "checksums.json").write_text("{not json")
    registry = ChecksumRegistry(Path(tmp_path))
    assert registry.get("a") is None
    registry.record("a", "ab" * 32)
    assert registry.get("a") == "ab" * 32


# -- a stalled network: bounded waits that say what timed out ---------------------------------
@pytest.fixture
def silent_server():
    """A TCP server on 127.0.0.1 that accepts connections (the kernel's backlog) and never
    answers: the stalled network, proxy or firewall that used to hang a download silently."""
    import socket

    weights._unreachable.clear()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    weights._unreachable.clear()


def _bounded(call, limit: float = 10.0):
    """Run ``call`` in a daemon thread; (exception, seconds), or fail if it is still waiting
    after ``limit`` seconds (the old 60-s-per-file wait must not hang the suite)."""
    import time

    box: dict = {}

    def target():
        start = time.monotonic()
        try:
            call()
        except BaseException as exc:  # noqa: BLE001 (handed to the test)
            box["exc"] = exc
        box["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"still waiting after {limit} s"
    return box.get("exc"), box["seconds"]


def test_a_server_that_never_answers_times_out_and_says_so(silent_server, tmp_path, monkeypatch):
    monkeypatch.setenv(weights.TIMEOUT_ENV, "0.5")
    url = f"{silent_server}/tips_vision.npz"
    exc, seconds = _bounded(lambda: fetch(url, tmp_path / "v.npz", progress=False))
    assert isinstance(exc, WeightsUnavailableError), exc
    message = str(exc)
    host = silent_server.removeprefix("http://")
    assert f"timed out: {host} did not answer within 0.5 s" in message
    assert weights.TIMEOUT_ENV in message and url in message and str(tmp_path / "v.npz") in message
    assert seconds < 5


def test_the_other_files_of_a_stalled_host_fail_at_once(silent_server, tmp_path):
    """One stall per host, not one per file (a preset is three files: 3 x the timeout)."""
    first, _ = _bounded(lambda: fetch(f"{silent_server}/a", tmp_path / "a", timeout=0.5))
    assert isinstance(first, WeightsUnavailableError)
    second, seconds = _bounded(lambda: fetch(f"{silent_server}/b", tmp_path / "b", timeout=0.5))
    assert isinstance(second, WeightsUnavailableError) and seconds < 0.3
    assert "unreachable earlier" in str(second) and "did not answer" in str(second)
    assert f"{silent_server}/b" in str(second) and str(tmp_path / "b") in str(second)


def test_download_timeout_from_the_environment(monkeypatch):
    from tipsomaly.errors import InvalidOptionError

    monkeypatch.delenv(weights.TIMEOUT_ENV, raising=False)
    assert weights.download_timeout() == 30.0
    monkeypatch.setenv(weights.TIMEOUT_ENV, "120")
    assert weights.download_timeout() == 120.0
    for bad in ("0", "-5", "nan", "soon"):
        monkeypatch.setenv(weights.TIMEOUT_ENV, bad)
        with pytest.raises(InvalidOptionError, match=weights.TIMEOUT_ENV):
            weights.download_timeout()
