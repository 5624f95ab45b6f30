"""File names as text: the one rule for showing a path in messages, tables and JSON
(:func:`display_path`). This module imports nothing heavy."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["display_path", "relative_name"]

PathLike = str | os.PathLike[str]


def display_path(path: PathLike | bytes) -> str:
    """``path`` as printable text for messages, tables and JSON: never raises, always encodable.

    File names are bytes on POSIX; Python keeps bytes that are not valid UTF-8 as lone
    surrogates (``surrogateescape``), which no UTF-8 writer accepts. Here they are shown as
    ``\\xNN`` escapes (``b'caf\\xe9.png'`` → ``caf\\xe9.png``); any other character that
    cannot be encoded becomes a ``\\uNNNN`` escape. Valid names come back unchanged.
    Use the path itself (not this text) to open the file again.
    """
    raw = path if isinstance(path, bytes) else os.fspath(path)
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "backslashreplace")
    try:
        raw.encode("utf-8")
        return raw
    except UnicodeEncodeError:
        pass
    try:
        data = raw.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return raw.encode("utf-8", "backslashreplace").decode("utf-8")
    return data.decode("utf-8", "backslashreplace")


def relative_name(path: PathLike, root: PathLike) -> str:
    """``path`` relative to ``root`` with ``/`` separators, or all of it when it is not below
    ``root`` (as written, neither resolved)."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).as_posix()
