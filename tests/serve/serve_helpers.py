"""Helpers of the ``tipsomaly serve`` tests (fixtures in conftest.py): the images, what the CLI
answers for them, and ``tipsomaly serve`` in a subprocess on a free port of 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

SIZE = 70  # the golden pipeline's image size: fast on CPU
TOKEN = "s3cret-token"
#: Debian's chromium and its driver, for the page tests (None: not installed)


def texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    base = rng.random((h // 6 + 1, w // 6 + 1))
    img = np.kron(base, np.ones((6, 6)))[:h, :w] * 0.6 + 0.4 * rng.random((h, w))
    return (np.stack([img, img * 0.95, img * 0.85], -1) * 255).astype(np.uint8)


def write_images(folder: Path, n: int, seed: int, *, defect: bool = False) -> list[Path]:
    """``n`` textures of varied sizes (the maps come back at each one's size)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 84 + 6 * (i % 3), 84 + 10 * (i % 2)
        img = texture(rng, h, w)
        if defect:
            img[20:40, 30:50] = 10
        path = folder / f"{folder.name}_{i:02d}.png"
        Image.fromarray(img).save(path)
        out.append(path)
    return out


@dataclass
class ServeData:
    root: Path
    model: Path
    profile: Path
    images: dict[str, list[Path]] = field(default_factory=dict)  # class → files
    cli: dict[str, dict] = field(default_factory=dict)  # file name → the CLI's row

    def files(self) -> list[tuple[str, Path]]:
        return [(c, p) for c, paths in self.images.items() for p in paths]


def cli_rows(out: Path) -> dict[str, dict]:
    rows = json.loads((out / "scores.json").read_text())["results"]
    return {Path(r["path"]).name: r for r in rows}


# -- a real server ------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    process: subprocess.Popen
    url: str
    log: Path

    def wait_ready(self, timeout: float = 60.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"serve exited {self.process.returncode}: {self.output()}")
            with contextlib.suppress(httpx.TransportError):  # not listening yet
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            time.sleep(0.1)
        raise AssertionError(f"no 200 from /health within {timeout} s: {self.output()}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]

    def stop(self, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def start_server(data: ServeData, *extra: str, env: dict[str, str] | None = None) -> Server:
    """``tipsomaly serve`` with the profile and both classes, on a free port (not waited for)."""
    return start_serve(
        data.root, "--profile", str(data.profile), "--classes", "screw", *extra, env=env
    )


def start_serve(root: Path, *args: str, env: dict[str, str] | None = None) -> Server:
    """``tipsomaly serve ARGS`` on a free port of 127.0.0.1 (not waited for); its output goes
    to a log file in ``root``."""
    port = free_port()
    log = root / f"serve-{port}.log"
    cmd = [sys.executable, "-m", "tipsomaly", "serve", *args, "--port", str(port)]
    process = subprocess.Popen(
        cmd,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **(env or {})},
    )
    return Server(process, f"http://127.0.0.1:{port}", log)


class Blocking:
    """A detector whose predictions wait for ``gate`` (to queue requests behind one, or to
    hold the queue full); ``entered`` is set once one is waiting."""

    def __init__(self, detector) -> None:
        self._detector = detector
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __getattr__(self, name):
        return getattr(self._detector, name)

    def predict(self, *args, **kwargs):
        self.entered.set()
        assert self.gate.wait(30)
        return self._detector.predict(*args, **kwargs)
