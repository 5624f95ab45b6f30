"""An on-disk cache of text embeddings, so a second run with the same prompts starts at once.

Entries are keyed by the model's weights fingerprint, its dtype, the prompt ensemble's content
and the class name (or the learned preambles' bytes), and stored as small safetensors files
under ``<cache>/text/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch

from ..tips.weights import cache_dir

log = logging.getLogger(__name__)

FORMAT = 1


class TextEmbeddingCache:
    """``get(key)`` / ``put(key, tensor)`` for (2, D) embeddings; keys from :meth:`key`."""

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory) if directory is not None else cache_dir() / "text"

    @staticmethod
    def key(**parts: object) -> str:
        """A hash of JSON-serialisable parts (tensors are hashed by their bytes)."""
        normalised = {
            k: _tensor_digest(v) if isinstance(v, torch.Tensor) else v for k, v in parts.items()
        }
        text = json.dumps({"format": FORMAT, **normalised}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def get(self, key: str) -> torch.Tensor | None:
        path = self._path(key)
        if not path.is_file():
            return None
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))["embeddings"]
        except (SafetensorError, OSError, KeyError, ValueError) as exc:
            log.warning("ignoring unreadable cached text embeddings %s (%s)", path, exc)
            return None

    def put(self, key: str, embeddings: torch.Tensor) -> None:
        from safetensors.torch import save_file

        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
            save_file({"embeddings": embeddings.detach().float().cpu().contiguous()}, str(tmp))
            os.replace(tmp, path)
        except OSError as exc:  # a read-only or full cache must not stop a run
            log.warning("could not cache text embeddings in %s (%s)", path, exc)


def _tensor_digest(t: torch.Tensor) -> str:
    data = t.detach().float().cpu().contiguous().numpy().tobytes()
    return f"{tuple(t.shape)}:{hashlib.sha256(data).hexdigest()}"
