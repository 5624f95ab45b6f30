"""The service's settings: limits, batching, access. Plain data: no FastAPI, no torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..data.images import DEFAULT_MAX_PIXELS
from ..errors import InvalidOptionError
from ..validation import choice, in_range, non_empty, positive_int

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
#: how long the model thread waits for more images once it holds one, in milliseconds
DEFAULT_MAX_WAIT_MS = 10.0
#: images waiting for the model before new requests get 503 + Retry-After
DEFAULT_MAX_QUEUE = 64
#: largest request body (all files and fields), in MiB
DEFAULT_MAX_UPLOAD_MB = 20.0
#: files per request
DEFAULT_MAX_FILES = 16
#: longest class name accepted from a request
MAX_CLASS_NAME = 200
#: environment variable holding the bearer token when ``--token`` is not given
TOKEN_ENV = "TIPSOMALY_SERVE_TOKEN"
#: how the anomaly map comes back: not at all, as PNG images, as a float32 ``.npy`` array
RETURN_MAPS = ("none", "png", "npy")
#: how a decision relates to its record (``--records``): ``strict`` answers only once the record
#: is committed (503 when it cannot be); ``best-effort`` answers anyway, logging and counting
#: the records lost
RECORD_MODES = ("strict", "best-effort")
#: the request header naming the client's station (stored with each record)
STATION_HEADER = "X-Station-Id"


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """How the service batches and what it accepts.

    Args:
        batch_size: most images per forward pass (a micro-batch).
        max_wait_ms: once the model thread holds an image, how long it waits for more before
            running a partial batch (0: never waits).
        max_queue: images queued for the model at most; a request that would exceed it is
            answered 503 with ``Retry-After`` (never left hanging).
        max_upload_bytes: largest request body; larger ones get 413 before they are read.
        max_files: most ``file`` parts per request (413 beyond); at most ``max_queue``.
        max_pixels: largest image (width × height, read from its header before decoding);
            larger ones get 422 (``None``: no limit).
        token: the bearer token every ``/v1/`` request must carry (``None``: no token).
        classes: class names requests may ask for, besides the profiles' (empty: any name
            when there are no profiles, else only the profiles' classes). Their text embeddings
            are computed while loading.
        drain_timeout_s: on SIGTERM, how long in-flight requests may take to finish.
        db: the records database (``--db``: a SQLite file path or a PostgreSQL URL); None:
            decisions are not recorded.
        keep_images: a folder keeping each recorded image and its map by SHA-256
            (``--keep-images``; needs ``db``).
        records: ``strict`` or ``best-effort`` (:data:`RECORD_MODES`).
        settings: the detector's :class:`~tipsomaly.method.config.DetectorConfig` (what
            ``GET /v1/info`` shows while the model loads; afterwards the detector's own).

    Raises:
        InvalidOptionError: a value that cannot work (the message names it).
    """

    batch_size: int = 8
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS
    max_queue: int = DEFAULT_MAX_QUEUE
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 2**20)
    max_files: int = DEFAULT_MAX_FILES
    token: str | None = None
    classes: tuple[str, ...] = ()
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    drain_timeout_s: float = 60.0
    db: str | None = None
    keep_images: str | None = None
    records: str = "strict"
    settings: Any = None

    def __post_init__(self) -> None:
        positive_int(self.batch_size, "batch_size")
        in_range(self.max_wait_ms, "max_wait_ms", 0)
        positive_int(self.max_queue, "max_queue")
        positive_int(self.max_upload_bytes, "max_upload_bytes")
        positive_int(self.max_files, "max_files")
        if self.max_files > self.max_queue:
            raise InvalidOptionError(
                f"max_files ({self.max_files}) must be at most max_queue ({self.max_queue}): "
                "a request's images are queued together"
            )
        if self.max_pixels is not None:
            positive_int(self.max_pixels, "max_pixels")
        in_range(self.drain_timeout_s, "drain_timeout_s", 0)
        if self.token is not None:
            non_empty(self.token, "token")
        for name in self.classes:
            check_class_name(name)
        choice(self.records, "records", RECORD_MODES)
        if self.keep_images is not None and self.db is None:
            raise InvalidOptionError("--keep-images needs --db (the records name the images)")


def check_class_name(name: str) -> str:
    """A class name a request may carry: non-empty, printable, at most
    :data:`MAX_CLASS_NAME` characters. Returns it unchanged (as ``predict --class-name``).

    Raises:
        InvalidOptionError: naming the problem.
    """
    text = non_empty(name, "class_name")
    if len(text) > MAX_CLASS_NAME:
        raise InvalidOptionError(f"class_name is longer than {MAX_CLASS_NAME} characters")
    if not text.isprintable():
        raise InvalidOptionError("class_name holds control characters")
    return text


__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_MAX_FILES",
    "DEFAULT_MAX_QUEUE",
    "DEFAULT_MAX_UPLOAD_MB",
    "DEFAULT_MAX_WAIT_MS",
    "DEFAULT_PORT",
    "MAX_CLASS_NAME",
    "RECORD_MODES",
    "RETURN_MAPS",
    "STATION_HEADER",
    "TOKEN_ENV",
    "ServeConfig",
    "check_class_name",
]
