"""The medical sets: MVTec-like, HeadCT, yes/no classification folders, image/mask pairs."""

from __future__ import annotations

import csv
from pathlib import Path

from ._common import (
    LayoutError,
    PathLike,
    _anomalous_entries,
    _child,
    _entry,
    _images_in,
    _MaskIndex,
    _Problems,
    _rel,
    _slug,
    _sorted,
    _subdirs,
)
from ._mvtec import _mvtec_class_dirs, _mvtec_like
from ._registry import Meta, register_layout

# fmt: off
_MEDICAL_NAMES = frozenset({
    "headct", "head_ct", "brain_mri", "brainmri", "br35h", "isic", "skin", "clinicdb", "colondb",
    "colon", "tn3k", "thyroid", "brain", "chest", "endo", "kvasir",
})
# fmt: on
#: (image folder, mask folder) pairs of the native medical segmentation sets (case-insensitive).
MEDICAL_PAIR_DIRS: tuple[tuple[str, str], ...] = (
    ("images", "masks"),
    ("image", "mask"),
    ("test-image", "test-mask"),
    ("test_image", "test_mask"),
    ("Original", "Ground Truth"),
    ("ISBI2016_ISIC_Part1_Test_Data", "ISBI2016_ISIC_Part1_Test_GroundTruth"),
)


def _find_yes_no(root: Path) -> Path | None:
    """``root`` or its first sub-folder holding both ``yes/`` and ``no/`` (BrainMRI, Br35H)."""
    for d in [root, *_subdirs(root)]:
        if _child(d, "yes") is not None and _child(d, "no") is not None:
            return d
    return None


def _headct(root: Path, cls: str) -> Meta | None:
    """HeadCT as downloaded (``labels.csv`` + ``head_ct/``), or ``None`` without ``labels.csv``."""
    labels = root / "labels.csv"
    if not labels.is_file():
        return None
    image_dir = root
    for cand in (root / "head_ct" / "head_ct", root / "head_ct"):
        if cand.is_dir() and _images_in(cand):
            image_dir = cand
            break
    problems = _Problems("medical (HeadCT)", root)
    entries = []
    with open(labels, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.reader(fh))
    for line_no, row in enumerate(rows[1:], start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            idx, label = int(row[0].strip()), int(row[1].strip())
        except (ValueError, IndexError):
            problems.add(f"labels.csv line {line_no}: expected 'id, 0|1', got {row!r}")
            continue
        if label not in (0, 1):
            problems.add(f"labels.csv line {line_no}: label must be 0 or 1, got {label}")
            continue
        img = image_dir / f"{idx:03d}.png"
        if not img.is_file():
            problems.add(f"labels.csv line {line_no}: image not found: {_rel(img, root)}")
            continue
        entries.append(_entry(root, img, None, cls, "defect" if label else "good", label))
    problems.raise_if_any()
    return {"train": {}, "test": {cls: entries}}


@register_layout
def medical(root: PathLike, *, class_name: str | None = None, strict_masks: bool = True) -> Meta:
    """The medical sets (HeadCT, BrainMRI, Br35H, ISIC, CVC-ColonDB, CVC-ClinicDB, TN3K).

    Accepted trees, tried in this order:

    1. MVTec-like, as AdaCLIP distributes them (the usual case)::

           <root>/<class>/test/good/*          normal images
           <root>/<class>/test/<other>/*       anomalous images (e.g. ``Ungood``, ``defect``)
           <root>/<class>/ground_truth/<other>/*   masks (absent for classification sets)

    2. HeadCT as downloaded: ``<root>/labels.csv`` (``id, hemorrhage``) and
       ``<root>/head_ct/[head_ct/]NNN.png``.
    3. Classification folders (BrainMRI ``brain_tumor_dataset/``, Br35H):
       ``<root>/[<sub>/]{yes,no}/*`` — ``no`` normal, ``yes`` anomalous, no masks.
    4. Segmentation pairs, every image anomalous: ``<root>/{images,masks}``,
       ``{image,mask}``, ``{test-image,test-mask}`` (TN3K), ``{Original,Ground Truth}``
       (CVC-ClinicDB), ``{ISBI2016_ISIC_Part1_Test_Data, …_GroundTruth}`` (ISIC 2016),
       masks matched by stem (``_segmentation``/``_mask`` suffixes allowed).

    For trees 2–4 everything goes to the test split under ``class_name`` (default: the root
    folder's name, lower-cased, spaces → ``_``; ``headct`` for tree 2).
    """
    root = Path(root)
    class_dirs = _mvtec_class_dirs(root)
    if class_dirs:
        return _mvtec_like(root, "medical", strict_masks=strict_masks, class_dirs=class_dirs)
    head = _headct(root, class_name or "headct")
    if head is not None:
        return _sorted(head)
    cls = class_name or _slug(root.name)
    yes_no = _find_yes_no(root)
    if yes_no is not None:
        entries = [_entry(root, p, None, cls, "good", 0) for p in _images_in(_child(yes_no, "no"))]
        entries += [
            _entry(root, p, None, cls, "defect", 1) for p in _images_in(_child(yes_no, "yes"))
        ]
        return _sorted({"train": {}, "test": {cls: entries}})
    for image_name, mask_name in MEDICAL_PAIR_DIRS:
        image_dir, mask_dir = _child(root, image_name), _child(root, mask_name)
        if image_dir is None or mask_dir is None:
            continue
        problems = _Problems("medical", root)
        entries = _anomalous_entries(
            root, _images_in(image_dir), _MaskIndex(mask_dir), cls, "defect", strict_masks, problems
        )
        problems.raise_if_any()
        return _sorted({"train": {}, "test": {cls: entries}})
    raise LayoutError(
        f"medical layout: {root} matches none of the accepted trees: <class>/test/… "
        f"(MVTec-like), labels.csv + head_ct/ (HeadCT), [sub/]{{yes,no}}/ (BrainMRI, Br35H), "
        f"or an image/mask folder pair ({', '.join('/'.join(p) for p in MEDICAL_PAIR_DIRS)})"
    )
