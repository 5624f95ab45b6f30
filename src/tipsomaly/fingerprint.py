"""Identities of what derived results depend on: files, settings, prompts and weights.

Every on-disk cache (prediction store, text embeddings, features) and every record of "what
produced this" (profiles, exports) takes its ids from here, so one definition of "the same
input" holds everywhere: files by the SHA-256 of their bytes (the same content has the same id
at any path), settings by a digest of their canonical JSON (key order never matters, floats are
exact), tensors by their shape and fp32 bytes. A model read from files carries the loader's
fingerprint instead (``TipsModel.fingerprint``).

This module imports nothing from tipsomaly and no torch at import time (torch only inside
the tensor functions), so every layer can use it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHUNK",
    "canonical_json",
    "digest",
    "file_digest",
    "files_digest",
    "prompts_digest",
    "tensor_digest",
    "tensors_digest",
    "text_digest",
]

#: bytes read at a time when hashing a file
CHUNK = 1 << 20

# (device, inode, size, mtime_ns, ctime_ns) → SHA-256 hex of the bytes, for this process
_FILE_DIGESTS: dict[tuple[int, int, int, int, int], str] = {}


def _stat_identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_digest(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes (64 hex digits), read in chunks of :data:`CHUNK` bytes.

    Remembered in this process while the file's identity (device, inode, size, modification
    and change times) stays the same.

    Raises:
        OSError: the file cannot be read.
    """
    with open(path, "rb") as f:
        identity = _stat_identity(os.fstat(f.fileno()))
        known = _FILE_DIGESTS.get(identity)
        if known is not None:
            return known
        sha = hashlib.sha256()
        buffer = bytearray(CHUNK)
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            sha.update(view[:n])
    result = _FILE_DIGESTS[identity] = sha.hexdigest()
    return result


def files_digest(paths: Iterable[str | os.PathLike], length: int = 32) -> str:
    """One id of a set of files, by their paths (as given) and the bytes of each.

    Hashes the lines ``<path>#<file_digest>`` in path order; a file that cannot be read
    contributes ``<path>#unreadable:<reason>`` instead (so its id never matches a readable one).
    Resolve the paths first when the id must not depend on how they were spelt.
    """
    sha = hashlib.sha256()
    for path in sorted({Path(p) for p in paths}):
        try:
            line = f"{path}#{file_digest(path)}\n"
        except OSError as exc:
            line = f"{path}#unreadable:{exc}\n"
        sha.update(line.encode("utf-8", "surrogateescape"))
    return sha.hexdigest()[:length]


def canonical_json(value: object) -> str:
    """``value`` as canonical JSON: keys sorted at every depth, floats exact (shortest
    round-trip form), ASCII only; objects JSON cannot write are written as their ``str()``."""
    return json.dumps(value, sort_keys=True, default=str)


def text_digest(text: str, length: int = 64) -> str:
    """The first ``length`` hex digits of the SHA-256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def digest(value: object, length: int = 32) -> str:
    """A settings id: the first ``length`` hex digits of the SHA-256 of
    :func:`canonical_json` of ``value`` (a JSON-able dict, list, string or number)."""
    return text_digest(canonical_json(value), length)


def prompts_digest(prompts: object, length: int = 32) -> str:
    """The id of a prompt set: :func:`digest` of its fields (a dataclass instance or a dict)."""
    if dataclasses.is_dataclass(prompts) and not isinstance(prompts, type):
        prompts = dataclasses.asdict(prompts)
    return digest(prompts, length)


def _fp32_bytes(t: torch.Tensor):
    """The tensor's values as a C-contiguous fp32 NumPy array on the CPU (a buffer to hash)."""
    return t.detach().float().cpu().contiguous().numpy()


def tensor_digest(t: torch.Tensor) -> str:
    """``"<shape>:<SHA-256 of the fp32 values>"``: one tensor's content (e.g. ``"(2, 8):ab.."``)."""
    return f"{tuple(t.shape)}:{hashlib.sha256(_fp32_bytes(t)).hexdigest()}"


def tensors_digest(tensors: Mapping[str, torch.Tensor], length: int = 16) -> str:
    """The id of named tensors (a model's ``state_dict``): every name, shape and fp32 value,
    in name order; the first ``length`` hex digits of a SHA-256."""
    sha = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        sha.update(f"{name}\0{tuple(t.shape)}\0".encode())
        sha.update(_fp32_bytes(t))
    return sha.hexdigest()[:length]
