"""Native dataset trees → ``meta.json`` dicts: one builder per layout, a registry, a detector.

Every builder takes the dataset root and returns ``{"train": {cls: [entries]}, "test": {cls:
[entries]}}`` in the format of :mod:`tipsomaly.data.meta` (paths relative to the root, ``/``
separators, classes and images sorted). Nothing is written; pass the result to
:func:`tipsomaly.data.meta.write_meta`.

Layouts (:data:`LAYOUTS`, in this order): ``mvtec``, ``mpdd``, ``btad``, ``dtd`` (one MVTec-like
builder), ``visa``, ``ksdd``, ``dagm``, ``medical``, ``folder``; :func:`detect_layout` guesses one.
Mask matching and the image extensions: :mod:`tipsomaly.data.layouts._common`.

The builders live in private modules, one per layout family (``_mvtec``, ``_visa``, ``_ksdd``,
``_dagm``, ``_medical``, ``_folder``); each adds itself to :data:`LAYOUTS` with
:func:`~tipsomaly.data.layouts._registry.register_layout`. Import the public names from here.
Importing this package does not import PyTorch.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..names import display_path
from ._common import (
    MASK_DIR_NAMES,
    MASK_EXTENSIONS,
    MASK_SUFFIXES,
    NORMAL_DIR_NAMES,
    LayoutError,
    PathLike,
)
from ._registry import LAYOUTS, LayoutBuilder, Meta, register_layout

# isort: off
# Each builder module adds its layouts to LAYOUTS when first imported: this order is LAYOUTS'.
from ._mvtec import BTAD_CLASSES, DTD_CLASSES, MPDD_CLASSES, MVTEC_CLASSES, btad, dtd, mpdd, mvtec
from ._visa import VISA_CLASSES, visa
from ._ksdd import KSDD_CLASS_NAME, ksdd
from ._dagm import dagm
from ._medical import MEDICAL_PAIR_DIRS, medical
from ._folder import folder

# isort: on
from ._detect import detect_layout

__all__ = [
    "BTAD_CLASSES",
    "DTD_CLASSES",
    "EXPECTED_TEST_COUNTS",
    "KSDD_CLASS_NAME",
    "LAYOUTS",
    "LAYOUT_NAMES",
    "MASK_DIR_NAMES",
    "MASK_EXTENSIONS",
    "MASK_SUFFIXES",
    "MEDICAL_PAIR_DIRS",
    "MPDD_CLASSES",
    "MVTEC_CLASSES",
    "NORMAL_DIR_NAMES",
    "VISA_CLASSES",
    "LayoutBuilder",
    "LayoutError",
    "Meta",
    "PathLike",
    "btad",
    "build_meta",
    "dagm",
    "detect_layout",
    "dtd",
    "folder",
    "ksdd",
    "medical",
    "mpdd",
    "mvtec",
    "register_layout",
    "visa",
]

logger = logging.getLogger(__name__)

#: The registered layout names, in registration order (the ``data meta --layout`` choices).
LAYOUT_NAMES: tuple[str, ...] = tuple(LAYOUTS)

#: Published test-set sizes (normal, anomalous) of complete datasets; a mismatch is logged.
EXPECTED_TEST_COUNTS: dict[str, tuple[tuple[str, ...], tuple[int, int]]] = {
    "mvtec": (MVTEC_CLASSES, (467, 1258)),
    "visa": (VISA_CLASSES, (962, 1200)),
    "btad": (BTAD_CLASSES, (451, 290)),
    "mpdd": (MPDD_CLASSES, (176, 282)),
}


def _check_expected_counts(layout: str, meta: Meta) -> None:
    """Log a warning when a complete known dataset has other than its published test counts."""
    known = EXPECTED_TEST_COUNTS.get(layout)
    test = meta.get("test", {})
    if known is None or set(test) != set(known[0]):
        return
    anomalous = sum(e["anomaly"] for items in test.values() for e in items)
    normal = sum(len(items) for items in test.values()) - anomalous
    if (normal, anomalous) != known[1]:
        logger.warning(
            "%s test set has %d normal / %d anomalous images; the published dataset has "
            "%d / %d (incomplete or modified download?)",
            layout,
            normal,
            anomalous,
            *known[1],
        )


def build_meta(
    root: PathLike,
    layout: str | None = None,
    *,
    classes: Sequence[str] | None = None,
    strict_masks: bool = True,
    **options: Any,
) -> Meta:
    """Scan a native dataset tree and return its ``meta.json`` dict.

    ``layout``: a key of :data:`LAYOUTS` (case-insensitive); None detects it
    (:func:`detect_layout`). ``strict_masks``: an anomalous image whose mask folder lacks its
    mask is an error (True) or an image without a mask (False, logged). ``options``: the
    layout's own (``csv_path`` for ``visa``; ``class_name`` for ``ksdd`` and ``medical``).
    Returns ``{"train": {cls: [entries]}, "test": {cls: [entries]}}``, paths relative to root.

    Raises:
        LayoutError: unknown layout, unrecognised tree, missing masks, no test images, a
            folder or file that cannot be read (named in the message).
    """
    try:
        return _build_meta(root, layout, classes=classes, strict_masks=strict_masks, **options)
    except OSError as exc:
        where = display_path(exc.filename) if exc.filename is not None else display_path(root)
        raise LayoutError(
            f"cannot read {where} while scanning the dataset at {display_path(root)}: "
            f"{exc.strerror or type(exc).__name__}"
        ) from None


def _build_meta(
    root: PathLike,
    layout: str | None,
    *,
    classes: Sequence[str] | None,
    strict_masks: bool,
    **options: Any,
) -> Meta:
    """:func:`build_meta` without the translation of ``OSError``."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"dataset root {display_path(root)} is not a folder")
    if layout is None:
        layout = detect_layout(root)
        logger.info("detected layout %r for %s", layout, display_path(root))
    key = layout.lower()
    if key not in LAYOUTS:
        raise LayoutError(f"unknown layout {layout!r}; known: {', '.join(LAYOUTS)}")
    builder = LAYOUTS[key]
    accepted = [
        n
        for n, p in inspect.signature(builder).parameters.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and n != "strict_masks"
    ]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise LayoutError(
            f"{key} layout: unknown option(s) {', '.join(unknown)}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    meta = builder(root, strict_masks=strict_masks, **options)
    if classes is not None:
        wanted = list(dict.fromkeys(classes))
        absent = [c for c in wanted if c not in meta["test"] and c not in meta["train"]]
        if absent:
            raise LayoutError(
                f"{key} layout: class(es) {', '.join(absent)} not found under {root}; "
                f"found: {', '.join(sorted(set(meta['test']) | set(meta['train'])))}"
            )
        meta = {split: {c: v for c, v in by.items() if c in wanted} for split, by in meta.items()}
    test = meta.get("test", {})
    if not any(test.values()):
        raise LayoutError(f"{key} layout: no test images found under {root}")
    for cls, items in test.items():
        anomalous = sum(e["anomaly"] for e in items)
        logger.info(
            "%s/%s: %d normal, %d anomalous test images",
            key,
            cls,
            len(items) - anomalous,
            anomalous,
        )
    _check_expected_counts(key, meta)
    return meta
