"""Input expansion for ``predict``-style verbs: PATH arguments → image files → output names.

Folder search rules (a folder or glob match searched recursively):

* hidden files and folders (``.name``) and the ``exclude`` folders (the output folder) are
  skipped;
* **earlier outputs**: a folder below the one searched holding a tipsomaly output marker —
  ``scores.csv`` together with ``scores.json`` (``predict``) or ``results.json`` (``eval``) —
  is skipped with its subfolders (info log), so a run never scores an earlier run's overlays;
* **mask folders**: a subfolder named like a ground-truth folder of the known dataset layouts
  (:data:`MASK_FOLDER_NAMES`, case-insensitive: ``ground_truth``, ``masks``, ``mask``,
  ``test_mask``, ``test-mask``, ``ground truth``) is skipped (info log) when its parent also
  holds other folders or image files, i.e. when it sits beside the images it annotates (MVTec
  AD ``<class>/ground_truth`` beside ``<class>/test``, ``images``/``masks`` pairs). Name
  the mask folder itself as a PATH to score its files;
* an unreadable folder is skipped with a warning naming it; the rest is still searched;
* file names are kept as the file system gives them: bytes that are not valid UTF-8 survive as
  ``surrogateescape`` characters, so the file can be opened; :func:`display_path` renders any
  path as printable, UTF-8-safe text for tables, JSON and messages (``\\xNN`` escapes).

A file named explicitly is always kept, whatever its extension, even if missing or unreadable
(it then becomes an error row).

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
import stat
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import TipsomalyError
from .images import IMAGE_EXTENSIONS, is_image_file
from .names import display_path

logger = logging.getLogger(__name__)

_GLOB_CHARS = re.compile(r"[*?\[]")

#: Ground-truth folder names of the known dataset layouts (compared case-insensitively),
#: skipped while searching a folder when they sit beside other folders or images.
MASK_FOLDER_NAMES: frozenset[str] = frozenset(
    {"ground_truth", "masks", "mask", "test_mask", "test-mask", "ground truth"}
)
#: Files whose presence marks a folder as tipsomaly's own output: all the files of one tuple.
OUTPUT_MARKERS: tuple[tuple[str, ...], ...] = (("scores.csv", "scores.json"), ("results.json",))

__all__ = [
    "MASK_FOLDER_NAMES",
    "OUTPUT_MARKERS",
    "NoInputsError",
    "expand_inputs",
    "folder_class_name",
    "is_output_folder",
    "output_names",
]


class NoInputsError(TipsomalyError, ValueError):
    """None of the given paths, folders or patterns named an image file."""

    def __init__(self, paths: Sequence[str | os.PathLike]) -> None:
        shown = ", ".join(repr(display_path(p)) for p in paths) or "(none)"
        super().__init__(
            f"no input images found in {shown} (folders are searched recursively for "
            f"{' '.join(IMAGE_EXTENSIONS)})"
        )


def is_output_folder(names: Iterable[str]) -> bool:
    """True when a folder with these entry names holds a tipsomaly output marker."""
    present = set(names)
    return any(all(m in present for m in marker) for marker in OUTPUT_MARKERS)


def _scan_folder(top: Path, exclude: set[Path]) -> list[Path]:
    """Image files under ``top`` (recursive, sorted); the skip rules are in the module doc."""
    found: list[Path] = []

    def unreadable(exc: OSError) -> None:
        where = exc.filename if exc.filename is not None else top
        reason = exc.strerror or type(exc).__name__
        logger.warning("skipping folder %s: cannot read it (%s)", display_path(where), reason)

    for root, dirs, files in os.walk(top, onerror=unreadable):
        here = Path(root)
        if here != top and is_output_folder(files):
            logger.info("skipping %s: it holds an earlier tipsomaly output", display_path(here))
            dirs[:] = []
            continue
        images = [f for f in files if is_image_file(f)]
        visible = sorted(d for d in dirs if not d.startswith("."))
        beside = len(visible) > 1 or bool(images)
        kept = []
        for d in visible:
            if _resolved(here / d) in exclude:
                continue
            if beside and d.lower() in MASK_FOLDER_NAMES:
                logger.info("skipping %s: a ground-truth mask folder", display_path(here / d))
                continue
            kept.append(d)
        dirs[:] = kept
        found.extend(here / f for f in images)
    return sorted(found, key=lambda p: p.relative_to(top).parts)


def _resolved(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError, ValueError):  # symlink loop, unreadable parent
        return Path(os.path.abspath(p))


def _kind(p: Path) -> str:
    """``"dir"``, ``"file"`` (anything else that exists) or ``"missing"``; never raises."""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError):  # no permission on a parent, odd name: keep it as a file
        return "file"
    return "dir" if stat.S_ISDIR(st.st_mode) else "file"


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
    excluded = {_resolved(Path(p)) for p in exclude}
    found: list[Path] = []
    seen: set[str] = set()
    for arg in paths:
        text = os.fspath(arg)
        p = Path(text)
        kind = _kind(p)
        if kind == "dir":
            items = _scan_folder(p, excluded)
            if not items:
                logger.warning("no image files in folder %s", display_path(p))
        elif kind == "file" or not _GLOB_CHARS.search(text):
            items = [p]
        else:
            items = []
            for match in sorted(glob.glob(text, recursive=True)):
                m = Path(match)
                if _kind(m) == "dir":
                    items.extend(_scan_folder(m, excluded))
                elif is_image_file(m):
                    items.append(m)
            if not items:
                logger.warning("no image files match %r", display_path(text))
        for item in items:
            key = os.path.normcase(os.path.abspath(item))
            if key in seen:
                logger.debug("skipping %s: already listed", display_path(item))
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
        digest = [hashlib.sha1(os.fsencode(a)).hexdigest()[:8] for a in absolute]
        names = _disambiguate(names, [f"{n}-{d}" for n, d in zip(names, digest, strict=True)])
    return names


def _disambiguate(names: list[str], fallback: list[str]) -> list[str]:
    counts = Counter(names)
    return [f if counts[n] > 1 else n for n, f in zip(names, fallback, strict=True)]


def folder_class_name(path: Path) -> str:
    """The class name of an image given by its parent folder's name (``bottle/x.png``).

    A class name is text (it goes into the prompts and the tables): bytes of the folder name
    that are not UTF-8 are shown as ``\\xNN`` escapes (:func:`display_path`).
    """
    return display_path(Path(os.path.abspath(path)).parent.name)
