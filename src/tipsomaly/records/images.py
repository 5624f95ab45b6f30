"""Images kept by content (``--keep-images DIR``): ``DIR/ab/abcdef…`` named by the SHA-256 of
their bytes, written whole or not at all; a repeat costs one ``stat``."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import OutputError
from ..files import atomic_write


def sha256(data: bytes) -> str:
    """The SHA-256 of ``data``, as 64 hex digits."""
    return hashlib.sha256(data).hexdigest()


def map_png(anomaly_map: np.ndarray) -> bytes:
    """(H, W) map in [0, 1] → 8-bit grey PNG bytes, ``round(255 · clip(map, 0, 1))`` (NaN 0)."""
    m = np.nan_to_num(np.asarray(anomaly_map, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
    buf = io.BytesIO()
    Image.fromarray(np.round(np.clip(m, 0, 1) * 255).astype(np.uint8), mode="L").save(buf, "PNG")
    return buf.getvalue()


class ImageStore:
    """A folder of files named by their SHA-256 (created when missing).

    Raises:
        OutputError: the folder cannot be created.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(self.folder, exc) from None

    def path(self, digest: str) -> Path:
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
            raise ValueError(f"not a SHA-256: {digest!r}")
        return self.folder / digest[:2] / digest

    def put(self, data: bytes, digest: str | None = None) -> str:
        """Keep ``data`` (once); its SHA-256.

        Raises:
            OutputError: it cannot be written (read-only folder, full disk).
        """
        digest = digest or sha256(data)
        path = self.path(digest)
        if path.is_file():
            return digest
        try:
            path.parent.mkdir(exist_ok=True)
        except OSError as exc:
            raise OutputError(path.parent, exc) from None
        atomic_write(path, lambda f: f.write(data))
        return digest

    def keep(self, data: bytes, anomaly_map: np.ndarray | None) -> tuple[str, str | None]:
        """Keep an image and its map (:func:`map_png`, when there is one); their SHA-256s."""
        image = self.put(data)
        return image, None if anomaly_map is None else self.put(map_png(anomaly_map))

    def get(self, digest: str) -> bytes | None:
        """The bytes kept under ``digest``, or None."""
        try:
            return self.path(digest).read_bytes()
        except (OSError, ValueError):
            return None


__all__ = ["ImageStore", "map_png", "sha256"]
