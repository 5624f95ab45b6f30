"""An on-disk cache of text embeddings, so a second run with the same prompts starts at once.

Entries are keyed by the model's weights fingerprint, its dtype, the prompt ensemble's content
and the class name (or the learned preambles' bytes), and stored as small safetensors files
under ``<cache>/text/``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from .. import fingerprint
from ..errors import one_line
from ..files import atomic_path
from ..tips.weights import cache_dir

logger = logging.getLogger(__name__)

FORMAT = 1


class TextEmbeddingCache:
    """``get(key)`` / ``put(key, tensor)`` for (2, D) embeddings; keys from :meth:`key`."""

    def __init__(self, directory: str | os.PathLike | None = None) -> None:
        self.directory = Path(directory) if directory is not None else cache_dir() / "text"

    @staticmethod
    def key(**parts: object) -> str:
        """A hash of JSON-serialisable parts, tensors by their shape and values: the
        :func:`~tipsomaly.fingerprint.digest` of the parts and the cache format."""
        normalised = {
            k: fingerprint.tensor_digest(v) if isinstance(v, torch.Tensor) else v
            for k, v in parts.items()
        }
        return fingerprint.digest({"format": FORMAT, **normalised}, 32)

    def _path(self, key: str) -> Path:
        return self.directory / key[:2] / f"{key}.safetensors"

    def get(self, key: str, shape: tuple[int, ...] | None = None) -> torch.Tensor | None:
        """The cached fp32 embeddings of ``key``, or None when there are none usable.

        An entry that cannot be read, is not fp32, has another ``shape`` than expected (when
        given; e.g. ``(2, D)``) or holds NaN/inf is logged as a warning and deleted, so the
        caller recomputes it; it is never returned.
        """
        path = self._path(key)
        if not path.is_file():
            return None
        problem = None
        try:
            tensor = _read_entry(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable entry is recomputed
            problem, tensor = f"unreadable ({one_line(exc)})", None
        except BaseException as exc:  # a panic inside the Rust reader, never a user's ^C
            if type(exc).__name__ != "PanicException":
                raise
            problem, tensor = f"unreadable ({one_line(exc)})", None
        if tensor is not None:
            if tensor.dtype != torch.float32:
                problem = f"dtype {tensor.dtype}, expected float32"
            elif shape is not None and tuple(tensor.shape) != tuple(shape):
                problem = f"shape {tuple(tensor.shape)}, expected {tuple(shape)}"
            elif not bool(torch.isfinite(tensor).all()):
                problem = "NaN or infinite values"
        if problem is None:
            return tensor
        logger.warning("discarding cached text embeddings %s: %s; recomputing them", path, problem)
        try:
            path.unlink()
        except OSError as exc:
            logger.warning("could not delete %s (%s)", path, exc)
        return None

    def put(self, key: str, embeddings: torch.Tensor) -> None:
        from safetensors.torch import save_file

        path = self._path(key)
        if not bool(torch.isfinite(embeddings).all()):
            logger.warning("not caching text embeddings with NaN or infinite values (%s)", path)
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                save_file({"embeddings": embeddings.detach().float().cpu().contiguous()}, str(tmp))
        except OSError as exc:  # a read-only or full cache must not stop a run
            logger.warning("could not cache text embeddings in %s (%s)", path, exc)


def _read_entry(path: Path) -> torch.Tensor:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    if set(tensors) != {"embeddings"}:
        raise ValueError(f"holds {sorted(tensors)[:5]} instead of 'embeddings'")
    return tensors["embeddings"]
