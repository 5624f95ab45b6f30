"""The weights cache: where checkpoint files live, how they are downloaded and verified."""

from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from ..errors import TipsomalyError
from ..files import atomic_path
from ..fingerprint import file_digest
from ..validation import env_seconds

logger = logging.getLogger(__name__)

CHUNK = 1 << 20
#: a download's progress bar counts bytes (KiB, MiB) and disappears when done
BYTES = {"unit": "B", "unit_scale": True, "unit_divisor": 1024, "leave": False}
USER_AGENT = "tipsomaly"
# Seconds to wait for a connection, and then for each read, before giving up on a download.
DEFAULT_TIMEOUT = 30.0
TIMEOUT_ENV = "TIPSOMALY_DOWNLOAD_TIMEOUT"
# A host that did not answer is not tried again for this long (one stall, not one per file).
UNREACHABLE_FOR_S = 300.0
_unreachable: dict[str, tuple[float, str]] = {}  # host -> (monotonic time, why)


class WeightsUnavailableError(TipsomalyError, RuntimeError):
    """A checkpoint file is not cached and cannot be downloaded now."""


class ChecksumError(TipsomalyError, RuntimeError):
    """A file's SHA-256 differs from the one expected or recorded."""


def offline_mode() -> bool:
    """True when ``TIPSOMALY_OFFLINE`` (or ``HF_HUB_OFFLINE``) is set to a true value."""
    for var in ("TIPSOMALY_OFFLINE", "HF_HUB_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def download_timeout() -> float:
    """Seconds a download waits to connect and then for each read: ``$TIPSOMALY_DOWNLOAD_TIMEOUT``
    or 30. A value that is not a positive number raises
    :class:`~tipsomaly.errors.InvalidOptionError`."""
    return env_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT)


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).netloc or url


def _is_timeout(exc: BaseException) -> bool:
    reason = getattr(exc, "reason", exc)
    return isinstance(reason, TimeoutError) or isinstance(exc, TimeoutError)


def _network_failure(exc: BaseException) -> bool:
    """True when the host could not be reached at all (as opposed to an HTTP error answer)."""
    if isinstance(exc, urllib.error.HTTPError):
        return False
    return _is_timeout(exc) or isinstance(exc, urllib.error.URLError)


def cache_dir() -> Path:
    """The root of tipsomaly's cache: ``$TIPSOMALY_HOME``, else the platform's cache directory."""
    home = os.environ.get("TIPSOMALY_HOME")
    if home:
        return Path(home).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA", Path.home() / "AppData" / "Local"))
        return base / "tipsomaly" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "tipsomaly"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tipsomaly"


def weights_dir() -> Path:
    """Where downloaded checkpoint files are kept (``<cache>/weights``)."""
    return cache_dir() / "weights"


class ChecksumRegistry:
    """``checksums.json`` beside the cached files: name → SHA-256 recorded at first download."""

    def __init__(self, directory: Path) -> None:
        self.path = Path(directory) / "checksums.json"

    def read(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("ignoring unreadable checksum registry %s (%s)", self.path, exc)
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str)}

    def get(self, name: str) -> str | None:
        return self.read().get(name)

    def record(self, name: str, sha256: str) -> None:
        data = self.read()
        data[name] = sha256
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(self.path) as tmp:
            tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def download(
    url: str,
    dest: str | os.PathLike,
    *,
    expected_sha256: str | None = None,
    progress: bool = True,
    timeout: float | None = None,
) -> str:
    """Download ``url`` to ``dest`` and return the file's SHA-256.

    ``timeout``: seconds to wait for the connection and then for each read (default
    :func:`download_timeout`: ``$TIPSOMALY_DOWNLOAD_TIMEOUT`` or 30); a server that stops
    answering raises ``TimeoutError`` instead of waiting.

    Bytes go to ``dest + ".part"``; an existing ``.part`` is resumed with an HTTP range request
    (a server that ignores the range restarts it). Only a complete file whose checksum matches
    ``expected_sha256`` (when given) is renamed to ``dest``, atomically; a mismatch deletes the
    partial file and raises :class:`ChecksumError`. Network errors propagate (``OSError``).
    """
    from tqdm.auto import tqdm

    if timeout is None:
        timeout = download_timeout()
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    digest = hashlib.sha256()
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:  # the part is already complete (or longer than the file)
            response = None
        else:
            raise
    if response is None:
        mode = "ab"
    elif offset and response.status == 206:
        mode = "ab"
        logger.info("resuming %s at byte %d", url, offset)
    else:
        mode, offset = "wb", 0
    if mode == "ab":
        with open(part, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                digest.update(chunk)
    if response is not None:
        with response:
            length = response.headers.get("Content-Length")
            total = offset + int(length) if length and length.isdigit() else None
            bar = tqdm(total=total, initial=offset, desc=dest.name, disable=not progress, **BYTES)
            with open(part, mode) as f, bar:
                received = 0
                for chunk in iter(lambda: response.read(CHUNK), b""):
                    f.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
                f.flush()
                os.fsync(f.fileno())
            if length and length.isdigit() and received != int(length):
                raise OSError(
                    f"connection closed after {received} of {length} bytes of {url}; "
                    "run the command again to resume"
                )
    sha = digest.hexdigest()
    if expected_sha256 and sha != expected_sha256.lower():
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{url}: downloaded file has SHA-256 {sha}, expected {expected_sha256}; "
            "the partial file was deleted"
        )
    os.replace(part, dest)
    return sha


def fetch(
    url: str,
    dest: str | os.PathLike,
    *,
    offline: bool | None = None,
    expected_sha256: str | None = None,
    progress: bool = True,
    timeout: float | None = None,
) -> Path:
    """``dest``, verified against its recorded checksum, downloading it first if missing.

    The SHA-256 of a file is recorded in the directory's ``checksums.json`` the first time it is
    seen (downloaded, or placed there by hand) and checked at every later call. Offline (or on a
    network failure), a missing file raises :class:`WeightsUnavailableError` naming the URL and
    the exact path to save it to. ``timeout`` as for :func:`download`; the error says what timed
    out, and a host that did not answer is not tried again for :data:`UNREACHABLE_FOR_S`
    seconds (the other files of a model fail at once instead of each waiting).
    """
    dest = Path(dest)
    registry = ChecksumRegistry(dest.parent)
    if dest.is_file():
        verify(dest, registry, expected_sha256)
        return dest
    if offline is None:
        offline = offline_mode()
    how = f"Download {url} by other means and save it as {dest}"
    if offline:
        raise WeightsUnavailableError(
            f"{dest.name} is not in the cache and downloads are off. {how}"
        )
    if timeout is None:
        timeout = download_timeout()
    host = _host(url)
    failed = _unreachable.get(host)
    if failed and time.monotonic() - failed[0] < UNREACHABLE_FOR_S:
        raise WeightsUnavailableError(f"could not download {url} ({failed[1]}). {how}")
    logger.info("downloading %s to %s (timeout %g s)", url, dest, timeout)
    try:
        sha = download(
            url, dest, expected_sha256=expected_sha256, progress=progress, timeout=timeout
        )
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, cut connections
        if _is_timeout(exc):
            reason = (
                f"timed out: {host} did not answer within {timeout:g} s; check the network or "
                f"proxy, or wait longer with {TIMEOUT_ENV}=120"
            )
        else:
            reason = str(getattr(exc, "reason", exc))
        if _network_failure(exc):
            _unreachable[host] = (time.monotonic(), f"{host} unreachable earlier: {reason}")
        raise WeightsUnavailableError(f"could not download {url} ({reason}). {how}") from exc
    registry.record(dest.name, sha)
    return dest


def verify(
    path: Path, registry: ChecksumRegistry | None = None, expected_sha256: str | None = None
) -> str:
    """Check ``path`` against ``expected_sha256`` or its recorded SHA-256 (recording it if new)."""
    registry = registry or ChecksumRegistry(path.parent)
    sha = file_digest(path)  # hashed once per process per file version
    expected = (expected_sha256 or registry.get(path.name) or "").lower()
    if expected and sha != expected:
        raise ChecksumError(
            f"{path} has SHA-256 {sha} but {expected} was recorded when it was downloaded: "
            "the file is corrupt or was replaced. Delete it and run the command again."
        )
    if not expected:
        logger.info("recording SHA-256 of %s", path)
        registry.record(path.name, sha)
    return sha
