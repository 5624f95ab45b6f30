"""VisA, from its split file (or its MVTec-like ``visa_pytorch`` conversion)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from ._common import LayoutError, PathLike, _entry, _Problems, _sorted
from ._mvtec import _mvtec_class_dirs, _mvtec_like
from ._registry import Meta, register_layout

logger = logging.getLogger(__name__)

# fmt: off
VISA_CLASSES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1",
    "pcb2", "pcb3", "pcb4", "pipe_fryum",
)
# fmt: on


@register_layout
def visa(root: PathLike, *, csv_path: PathLike | None = None, strict_masks: bool = True) -> Meta:
    """VisA, from its split file.

    Expected tree (the ``VisA_20220922`` release)::

        <root>/split_csv/1cls.csv          columns: object,split,label,image,mask
        <root>/<class>/Data/Images/{Normal,Anomaly}/*.JPG
        <root>/<class>/Data/Masks/Anomaly/*.png

    ``label`` is ``normal`` or ``anomaly``; ``image``/``mask`` are relative to the root;
    ``split`` is ``train`` or ``test``. ``specie_name`` is ``good`` for normal images and
    ``bad`` for anomalous ones (VisA has no defect types in the split file). ``csv_path``
    selects another split file (relative to the root or absolute). Without a split file, the
    MVTec-like ``visa_pytorch`` tree (``<class>/{train/good, test/{good,bad},
    ground_truth/bad}``) is read instead.
    """
    root = Path(root)
    path = Path(csv_path) if csv_path is not None else root / "split_csv" / "1cls.csv"
    if not path.is_absolute():
        path = root / path
    if not path.is_file():
        if csv_path is None and _mvtec_class_dirs(root):
            logger.info("visa: no split_csv/1cls.csv; reading the MVTec-like (visa_pytorch) tree")
            return _mvtec_like(root, "visa", strict_masks=strict_masks)
        raise LayoutError(
            f"visa layout: split file {path} not found (expected "
            f"<root>/split_csv/1cls.csv with columns object,split,label,image,mask)"
        )
    problems = _Problems("visa", root)
    meta: Meta = {"train": {}, "test": {}}
    with open(path, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = {(f or "").strip().lower(): f for f in (reader.fieldnames or [])}
        missing = [c for c in ("object", "split", "label", "image") if c not in fields]
        if missing:
            raise LayoutError(
                f"visa layout: {path} lacks column(s) {', '.join(missing)} "
                f"(found {', '.join(fields) or 'none'})"
            )

        def col(row: dict[str, str | None], name: str) -> str:
            key = fields.get(name)
            return (row.get(key) or "").strip() if key else ""

        for line_no, row in enumerate(reader, start=2):
            cls, split, label = col(row, "object"), col(row, "split").lower(), col(row, "label")
            image, mask = col(row, "image"), col(row, "mask")
            where = f"{path.name} line {line_no}"
            if not cls or not image:
                problems.add(f"{where}: empty object or image column")
                continue
            if split not in ("train", "test"):
                problems.add(f"{where}: split must be train or test, got {split!r}")
                continue
            if label.lower() not in ("normal", "anomaly"):
                problems.add(f"{where}: label must be normal or anomaly, got {label!r}")
                continue
            anomaly = int(label.lower() == "anomaly")
            img_path = root / image
            if not img_path.is_file():
                problems.add(f"{where}: image not found: {image}")
                continue
            mask_path = None
            if anomaly and mask:
                mask_path = root / mask
                if not mask_path.is_file():
                    if strict_masks:
                        problems.add(f"{where}: mask not found: {mask}")
                        continue
                    logger.warning("%s: mask not found: %s; kept without a mask", where, mask)
                    mask_path = None
            entry = _entry(root, img_path, mask_path, cls, "bad" if anomaly else "good", anomaly)
            meta[split].setdefault(cls, []).append(entry)
    problems.raise_if_any()
    return _sorted(meta)
