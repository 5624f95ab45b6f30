"""Input expansion for ``predict``-style verbs: PATH arguments → image files → output names.

Naming rule: ``<name>`` is the image's path relative to the deepest folder holding every
input, without its extension, so the outputs mirror the input folders (``a/x.png`` and
``b/x.png`` give ``a/x`` and ``b/x``). When two inputs would still share a name (``x.png``
and ``x.jpg`` in one folder) they keep their extension (``x.png``, ``x.jpg``); any clash left
gets ``-<8 hex digits of the path's SHA-1>``.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import TipsomalyError
from .images import IMAGE_EXTENSIONS, is_image_file

log = logging.getLogger(__name__)

_GLOB_CHARS = re.compile(r"[*?\[]")


class NoInputsError(TipsomalyError, ValueError):
    """None of the given paths, folders or patterns named an image file."""

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        shown = ", ".join(repr(os.fspath(p)) for p in paths) or "(none)"
        super().__init__(
            f"no input images found in {shown} (folders are searched recursively for "
            f"{' '.join(IMAGE_EXTENSIONS)})"
        )


def _scan_folder(top: Path, exclude: set[Path]) -> list[Path]:
    """Image files under ``top`` (recursive, sorted), skipping hidden and excluded folders."""
    found: list[Path] = []
    for root, dirs, files in os.walk(top):
        here = Path(root)
        dirs[:] = [d for d in dirs if not d.startswith(".") and (here / d).resolve() not in exclude]
        found.extend(here / f for f in files if is_image_file(f))
    return sorted(found, key=lambda p: p.relative_to(top).parts)


def expand_inputs(
    paths: Iterable[str | os.PathLike], *, exclude: Iterable[str | os.PathLike] = ()
) -> list[Path]:
    """Turn PATH arguments into the list of image files to score, in order, without duplicates.

    * a folder: every image file below it (recursive; by extension, see
      :data:`~tipsomaly.data.images.IMAGE_EXTENSIONS`; hidden files and folders and the
      ``exclude`` folders skipped), sorted;
    * a glob pattern that the shell did not expand (``*``, ``?``, ``[``; ``**`` recurses):
      its matching image files, and the images in its matching folders, sorted;
    * anything else is taken as a file, whatever its extension, even if missing (it then
      becomes an error row, so a typo is reported rather than silently dropped).
    """
    excluded = {Path(p).resolve() for p in exclude}
    found: list[Path] = []
    seen: set[str] = set()
    for arg in paths:
        text = os.fspath(arg)
        p = Path(text)
        if p.is_dir():
            items = _scan_folder(p, excluded)
            if not items:
                log.warning("no image files in folder %s", p)
        elif p.exists() or not _GLOB_CHARS.search(text):
            items = [p]
        else:
            items = []
            for match in sorted(glob.glob(text, recursive=True)):
                m = Path(match)
                if m.is_dir():
                    items.extend(_scan_folder(m, excluded))
                elif is_image_file(m):
                    items.append(m)
            if not items:
                log.warning("no image files match %r", text)
        for item in items:
            key = os.path.normcase(os.path.abspath(item))
            if key in seen:
                log.debug("skipping %s: already listed", item)
                continue
            seen.add(key)
            found.append(item)
    return found


def output_names(files: Sequence[str | os.PathLike]) -> list[str]:
    """Unique output names (POSIX relative paths, no extension) for ``files``; see module doc."""
    absolute = [Path(os.path.abspath(f)) for f in files]
    if not absolute:
        return []
    try:
        root = Path(os.path.commonpath([str(a.parent) for a in absolute]))
        relative = [a.relative_to(root) for a in absolute]
    except ValueError:  # different drives (Windows): no common folder
        relative = [Path(a.name) for a in absolute]
    names = [r.with_suffix("").as_posix() if r.suffix else r.as_posix() for r in relative]
    names = _disambiguate(names, [r.as_posix() for r in relative])
    if len(set(names)) != len(names):
        digest = [hashlib.sha1(str(a).encode()).hexdigest()[:8] for a in absolute]
        names = _disambiguate(names, [f"{n}-{d}" for n, d in zip(names, digest, strict=True)])
    return names


def _disambiguate(names: list[str], fallback: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return [f if counts[n] > 1 else n for n, f in zip(names, fallback, strict=True)]


def folder_class_name(path: Path) -> str:
    """The class name of an image given by its parent folder's name (``bottle/x.png``)."""
    return Path(os.path.abspath(path)).parent.name
