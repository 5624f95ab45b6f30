"""Guess the layout of a dataset root from its folder names."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

from ._common import NORMAL_DIR_NAMES, LayoutError, PathLike, _child, _subdirs
from ._dagm import _is_dagm_native_class
from ._folder import _is_folder_class
from ._ksdd import KSDD_CLASS_NAME, _is_ksdd_native_dir
from ._medical import _MEDICAL_NAMES, MEDICAL_PAIR_DIRS, _find_yes_no
from ._mvtec import BTAD_CLASSES, MPDD_CLASSES, _mvtec_class_dirs
from ._registry import LAYOUTS
from ._visa import VISA_CLASSES

_DTD_NAME = re.compile(r"^[A-Z][a-z]+_\d{3}$")
_DAGM_NAME = re.compile(r"^class\d+(_def)?$", re.IGNORECASE)


def _layout_from_class_names(names: Sequence[str], class_dirs: Sequence[Path]) -> str:
    """The layout of an MVTec-like tree, named after its class folders (default ``mvtec``)."""
    lowered = {n.lower() for n in names}
    if (
        lowered
        and lowered <= set(BTAD_CLASSES)
        and any(_child(_child(d, "test"), "ko") is not None for d in class_dirs)
    ):
        return "btad"
    if lowered and all(_DAGM_NAME.match(n) for n in names):
        return "dagm"
    if lowered and lowered <= set(MPDD_CLASSES):
        return "mpdd"
    if names and all(_DTD_NAME.match(n) for n in names):
        return "dtd"
    if lowered & {"sdd", "ksdd", KSDD_CLASS_NAME}:
        return "ksdd"
    if lowered and lowered <= _MEDICAL_NAMES:
        return "medical"
    if lowered and lowered <= set(VISA_CLASSES):
        return "visa"
    return "mvtec"


def detect_layout(root: PathLike) -> str:
    """Best-effort guess of the layout of ``root`` (a key of :data:`LAYOUTS`).

    Checks, in order: a VisA split file; original KSDD ``kosNN`` folders; original DAGM
    ``ClassN/{Train,Test}/Label``; an MVTec-like ``<class>/test/`` tree (named after its class
    names: BTAD, DAGM, MPDD, DTD, KSDD, medical, VisA, else ``mvtec``); the native medical
    trees; the generic ``folder`` tree.

    Raises:
        LayoutError: nothing recognised (pass ``layout=`` explicitly).
    """
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"dataset root {root} is not a folder")
    if (root / "split_csv").is_dir() and any((root / "split_csv").glob("*.csv")):
        return "visa"
    if any(_is_ksdd_native_dir(d) for d in _subdirs(root)):
        return "ksdd"
    if _is_dagm_native_class(root) or any(_is_dagm_native_class(d) for d in _subdirs(root)):
        return "dagm"
    class_dirs = _mvtec_class_dirs(root)
    if class_dirs:
        return _layout_from_class_names([n for _, n in class_dirs], [d for d, _ in class_dirs])
    if (
        (root / "labels.csv").is_file()
        or _find_yes_no(root) is not None
        or any(
            _child(root, a) is not None and _child(root, b) is not None
            for a, b in MEDICAL_PAIR_DIRS
        )
    ):
        return "medical"
    if any(_child(root, n) is not None for n in NORMAL_DIR_NAMES) or any(
        _is_folder_class(d) for d in _subdirs(root)
    ):
        return "folder"
    seen = ", ".join(p.name for p in _subdirs(root)[:10]) or "no sub-folders"
    raise LayoutError(
        f"cannot recognise the layout of {root} ({seen}); pass one of: {', '.join(LAYOUTS)}"
    )
