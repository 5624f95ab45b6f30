"""Files written whole or not at all (a temporary file beside the target, then renamed), and
the check that a file named by a record stays inside its folder."""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import IO

from .errors import OutputError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temporary name beside ``path`` (``.<name>.<random>.tmp``) for the block to write;
    renamed to ``path`` when the block ends without error, removed otherwise. Errors raise as
    they are (``OSError``)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], object]) -> None:
    """Write ``path`` whole or not at all (``write`` fills a binary file), synced to disk.

    Raises:
        OutputError: it cannot be written (named).
    """
    try:
        with atomic_path(path) as tmp, open(tmp, "xb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise OutputError(path, exc) from None


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """:func:`atomic_write` of ``text`` as UTF-8 (no newline translation)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def inside_folder(name: object) -> bool:
    """A non-empty relative path that stays inside its folder (a file named by an export's or
    a profile's record): no ``..``, not absolute, no root and no drive, read as a POSIX and as
    a Windows path (a record written on one system may be read on the other; ``C:model.onnx``
    is relative to drive C's folder)."""
    if not isinstance(name, str) or not name:
        return False
    for flavour in (PurePosixPath, PureWindowsPath):
        p = flavour(name)
        if p.is_absolute() or p.root or p.drive or ".." in p.parts:
            return False
    return True
