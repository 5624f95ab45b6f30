"""Native dataset trees → ``meta.json`` dicts: one builder per layout, a registry, a detector.

Every builder takes the dataset root and returns ``{"train": {cls: [entries]}, "test": {cls:
[entries]}}`` in the format of :mod:`tipsomaly.data.meta` (paths relative to the root, ``/``
separators, classes and images sorted). Nothing is written; pass the result to
:func:`tipsomaly.data.meta.write_meta`.

Masks are matched to images by file stem, case-insensitively, trying the suffixes
``_mask``, ``_label``, ``_segmentation``, ``_gt`` and none, with any of the extensions
``.png .bmp .tif .tiff .jpg .jpeg .gif`` (so ``000.png`` ↔ ``000_mask.png``, ``0002.PNG`` ↔
``0002_label.PNG``, ``ISIC_0000003.jpg`` ↔ ``ISIC_0000003_Segmentation.png``, BTAD's mixed
``.bmp``/``.png``). The reference scripts (AnomalyCLIP / AdaCLIP ``generate_dataset_json``)
pair images and masks by sorted position instead, which silently mispairs when a file is
missing; here an anomalous image whose defect folder has masks but no mask for it is an error
(``strict_masks=True``, the default) or, with ``strict_masks=False``, an image without a mask
(logged). A defect folder with no mask folder at all gives anomalous images without masks
(classification-only sets).

Image files: ``.png .jpg .jpeg .bmp .tif .tiff .webp`` (any case); hidden files are skipped.
"""

from __future__ import annotations

import csv
import inspect
import logging
import os
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from ..errors import TipsomalyError
from .images import ImageLoadError, is_image_file, load_mask
from .names import display_path

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
Meta = dict[str, dict[str, list[dict[str, Any]]]]
LayoutBuilder = Callable[..., Meta]

#: Suffixes tried, in this order, after an image's stem to find its mask (case-insensitive).
MASK_SUFFIXES: tuple[str, ...] = ("_mask", "_label", "_segmentation", "_gt", "")
#: Mask file extensions, in order of preference when several files share a stem.
MASK_EXTENSIONS: tuple[str, ...] = (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg", ".gif")
#: Folder names (case-insensitive) holding normal images.
NORMAL_DIR_NAMES: frozenset[str] = frozenset({"good", "ok", "normal"})
#: Folder names (case-insensitive) holding masks, next to ``test/`` (MVTec-like) or next to the
#: defect folders (generic folder layout).
MASK_DIR_NAMES: tuple[str, ...] = ("ground_truth", "masks")

# fmt: off
MVTEC_CLASSES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut", "pill",
    "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
VISA_CLASSES = (
    "candle", "capsules", "cashew", "chewinggum", "fryum", "macaroni1", "macaroni2", "pcb1",
    "pcb2", "pcb3", "pcb4", "pipe_fryum",
)
MPDD_CLASSES = (
    "bracket_black", "bracket_brown", "bracket_white", "connector", "metal_plate", "tubes",
)
BTAD_CLASSES = ("01", "02", "03")
DTD_CLASSES = (
    "Blotchy_099", "Fibrous_183", "Marbled_078", "Matted_069", "Mesh_114", "Perforated_037",
    "Stratified_154", "Woven_001", "Woven_068", "Woven_104", "Woven_125", "Woven_127",
)
# fmt: on
#: Published test-set sizes (normal, anomalous) of complete datasets; a mismatch is logged.
EXPECTED_TEST_COUNTS: dict[str, tuple[tuple[str, ...], tuple[int, int]]] = {
    "mvtec": (MVTEC_CLASSES, (467, 1258)),
    "visa": (VISA_CLASSES, (962, 1200)),
    "btad": (BTAD_CLASSES, (451, 290)),
    "mpdd": (MPDD_CLASSES, (176, 282)),
}
KSDD_CLASS_NAME = "electrical commutators"  # the class name TipsOmaly/AnomalyCLIP use for KSDD
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


class LayoutError(TipsomalyError, ValueError):
    """The folder tree does not match the requested layout (the message says what was expected)."""


# ----------------------------------------------------------------------------- small helpers


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _entry(
    root: Path, image: Path, mask: Path | None, cls: str, specie: str, anomaly: int
) -> dict[str, Any]:
    return {
        "img_path": _rel(image, root),
        "mask_path": _rel(mask, root) if mask is not None else "",
        "cls_name": cls,
        "specie_name": specie,
        "anomaly": int(anomaly),
    }


def _subdirs(d: Path) -> list[Path]:
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(d: Path) -> list[Path]:
    """Image files directly inside ``d``, sorted by name."""
    if not d.is_dir():
        return []
    return sorted(p for p in d.iterdir() if p.is_file() and is_image_file(p))


def _child(d: Path, name: str) -> Path | None:
    """The child folder of ``d`` called ``name`` (exact match first, then case-insensitive)."""
    exact = d / name
    if exact.is_dir():
        return exact
    low = name.lower()
    for p in _subdirs(d):
        if p.name.lower() == low:
            return p
    return None


def _slug(name: str) -> str:
    return re.sub(r"\s+", "_", name.strip()).lower() or "object"


class _MaskIndex:
    """Mask files of one folder, looked up by image stem + known suffix (case-insensitive)."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder
        self._by_stem: dict[str, list[Path]] = {}
        self.used: set[Path] = set()
        if folder is None or not folder.is_dir():
            return
        for p in folder.iterdir():
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in MASK_EXTENSIONS:
                self._by_stem.setdefault(p.stem.lower(), []).append(p)
        rank = {ext: i for i, ext in enumerate(MASK_EXTENSIONS)}
        for paths in self._by_stem.values():
            paths.sort(key=lambda q: (rank[q.suffix.lower()], q.name))

    def __bool__(self) -> bool:
        return bool(self._by_stem)

    def match(self, image_stem: str) -> Path | None:
        stem = image_stem.lower()
        for suffix in MASK_SUFFIXES:
            found = self._by_stem.get(stem + suffix)
            if found:
                self.used.add(found[0])
                return found[0]
        return None

    def unused(self) -> list[Path]:
        return sorted(p for paths in self._by_stem.values() for p in paths if p not in self.used)


class _Problems:
    """Collects layout problems and raises them together."""

    def __init__(self, layout: str, root: Path) -> None:
        self.layout, self.root, self.items = layout, root, []

    def add(self, text: str) -> None:
        self.items.append(text)

    def raise_if_any(self) -> None:
        if not self.items:
            return
        shown = self.items[:20]
        more = f"\n  ... and {len(self.items) - 20} more" if len(self.items) > 20 else ""
        lines = "\n".join(f"  - {t}" for t in shown)
        raise LayoutError(
            f"{self.layout} layout at {self.root}: {len(self.items)} problem(s):\n{lines}{more}"
        )


def _anomalous_entries(
    root: Path,
    images: Iterable[Path],
    masks: _MaskIndex,
    cls: str,
    specie: str,
    strict_masks: bool,
    problems: _Problems,
) -> list[dict[str, Any]]:
    out = []
    for img in images:
        mask = masks.match(img.stem) if masks else None
        if mask is None and masks:
            text = (
                f"no mask for {_rel(img, root)} in {_rel(masks.folder, root)} "
                f"(tried {img.stem}{{{','.join(MASK_SUFFIXES)}}}.<ext>)"
            )
            if strict_masks:
                problems.add(text)
                continue
            logger.warning("%s; kept as an anomalous image without a mask", text)
        out.append(_entry(root, img, mask, cls, specie, 1))
    if masks:
        for extra in masks.unused():
            logger.warning("mask %s matches no image", _rel(extra, root))
    return out


def _sorted(meta: Meta) -> Meta:
    return {
        split: {
            cls: sorted(items, key=lambda e: e["img_path"])
            for cls, items in sorted(classes.items())
        }
        for split, classes in meta.items()
    }


# ----------------------------------------------------------------------------- MVTec-like trees


def _mvtec_class_dirs(root: Path) -> list[tuple[Path, str]]:
    """(class folder, name) pairs of an MVTec-like tree: root/<cls>/test/…, or root/test/…."""
    if _child(root, "test") is not None:
        return [(root, root.name)]
    return [(d, d.name) for d in _subdirs(root) if _child(d, "test") is not None]


def _mvtec_like(
    root: Path,
    layout: str,
    *,
    normal_names: Iterable[str] = NORMAL_DIR_NAMES,
    strict_masks: bool = True,
    class_dirs: Sequence[tuple[Path, str]] | None = None,
) -> Meta:
    normal = {n.lower() for n in normal_names}
    dirs = list(class_dirs) if class_dirs is not None else _mvtec_class_dirs(root)
    if not dirs:
        raise LayoutError(
            f"{layout} layout: no class folder with a test/ subfolder under {root} "
            f"(expected <root>/<class>/test/<defect or good>/<image>)"
        )
    problems = _Problems(layout, root)
    meta: Meta = {"train": {}, "test": {}}
    for cls_dir, cls in dirs:
        mask_roots = [m for m in (_child(cls_dir, n) for n in MASK_DIR_NAMES) if m is not None]
        for split in ("train", "test"):
            split_dir = _child(cls_dir, split)
            if split_dir is None:
                continue
            entries: list[dict[str, Any]] = []
            for specie_dir in _subdirs(split_dir):
                specie = specie_dir.name
                images = _images_in(specie_dir)
                if not images:
                    logger.warning("%s: no images in %s", layout, _rel(specie_dir, root))
                    continue
                if specie.lower() in normal:
                    entries += [_entry(root, p, None, cls, specie, 0) for p in images]
                    continue
                mask_dir = next((d for d in (_child(m, specie) for m in mask_roots) if d), None)
                if mask_dir is None and split == "test":
                    logger.info(
                        "%s: no mask folder for %s/%s/%s: image-level labels only",
                        layout,
                        cls,
                        split,
                        specie,
                    )
                entries += _anomalous_entries(
                    root, images, _MaskIndex(mask_dir), cls, specie, strict_masks, problems
                )
            meta[split][cls] = entries
    problems.raise_if_any()
    return _sorted(meta)


def mvtec(root: PathLike, *, strict_masks: bool = True) -> Meta:
    """MVTec AD (and any tree laid out like it).

    Expected tree::

        <root>/<class>/train/good/*.png
        <root>/<class>/test/good/*.png
        <root>/<class>/test/<defect>/*.png
        <root>/<class>/ground_truth/<defect>/<name>_mask.png

    ``root`` may also be a single class folder (``<root>/test/…``; the class is the folder name).
    Normal folders are ``good`` (also ``ok``/``normal``); every other folder under ``test/`` is a
    defect type (``specie_name``). Both ``train`` and ``test`` splits are built.
    """
    return _mvtec_like(Path(root), "mvtec", strict_masks=strict_masks)


def mpdd(root: PathLike, *, strict_masks: bool = True) -> Meta:
    """MPDD: the MVTec AD tree.

    ``<class>/{train/good, test/<defect>, ground_truth/<defect>/<name>_mask.png}``.

    Classes: bracket_black, bracket_brown, bracket_white, connector, metal_plate, tubes.
    """
    return _mvtec_like(Path(root), "mpdd", strict_masks=strict_masks)


def btad(root: PathLike, *, strict_masks: bool = True) -> Meta:
    """BTAD (``BTech_Dataset_transformed``).

    Expected tree::

        <root>/<01|02|03>/train/ok/*.{bmp,png}
        <root>/<01|02|03>/test/ok/*.{bmp,png}
        <root>/<01|02|03>/test/ko/*.{bmp,png}
        <root>/<01|02|03>/ground_truth/ko/*.{png,bmp}

    Normal folder ``ok``, anomalous ``ko``. Image and mask extensions differ between classes
    (the original release mixes ``.bmp`` and ``.png``; anomalib converts everything to
    ``.png``), so masks are matched by stem, whatever the extension.
    """
    return _mvtec_like(Path(root), "btad", strict_masks=strict_masks)


def dtd(root: PathLike, *, strict_masks: bool = True) -> Meta:
    """DTD-Synthetic.

    Expected tree::

        <root>/<Texture_NNN>/train/good/*.png
        <root>/<Texture_NNN>/test/good/*.png
        <root>/<Texture_NNN>/test/bad/*.png
        <root>/<Texture_NNN>/ground_truth/bad/<name>[_mask].png

    Twelve classes: Blotchy_099, Fibrous_183, Marbled_078, Matted_069, Mesh_114,
    Perforated_037, Stratified_154, Woven_001, Woven_068, Woven_104, Woven_125, Woven_127.
    """
    return _mvtec_like(Path(root), "dtd", strict_masks=strict_masks)


# ----------------------------------------------------------------------------- VisA


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


# ----------------------------------------------------------------------------- KSDD


def _is_ksdd_native_dir(d: Path) -> bool:
    return any(p.stem.lower().endswith("_label") for p in _images_in(d))


def ksdd(root: PathLike, *, class_name: str = KSDD_CLASS_NAME, strict_masks: bool = True) -> Meta:
    """KolektorSDD (KSDD), in either of the two trees people have.

    1. The ZSAD-converted tree (AdaCLIP's ``SDD_anomaly_detection``, the one the published
       ZSAD numbers use): each original image is cut into three vertical thirds, normal thirds
       split 75/25 into train/test, defective thirds all in test::

           <root>/<SDD | electrical commutators>/train/good/*.png
           <root>/<SDD | electrical commutators>/test/{good,defect}/*.png
           <root>/<SDD | electrical commutators>/ground_truth/defect/<name>_mask.png

       read like MVTec AD (the class is the folder name).
    2. The original ``KolektorSDD`` download::

           <root>/kos01 … kos50/Part0.jpg, Part0_label.bmp, …

       every image is one test sample of class ``class_name``; it is anomalous when its
       ``_label`` image has a non-zero pixel (the labels are read). No train split. Numbers
       on this tree are not comparable with the published ones (whole images, not thirds).
    """
    root = Path(root)
    class_dirs = _mvtec_class_dirs(root)
    if class_dirs:
        return _mvtec_like(root, "ksdd", strict_masks=strict_masks, class_dirs=class_dirs)
    dirs = [d for d in _subdirs(root) if _is_ksdd_native_dir(d)]
    if not dirs and _is_ksdd_native_dir(root):
        dirs = [root]
    if not dirs:
        raise LayoutError(
            f"ksdd layout: {root} has neither <class>/test/… folders (converted KSDD) nor "
            f"kosNN/PartN.jpg + PartN_label.bmp folders (original KolektorSDD)"
        )
    problems = _Problems("ksdd", root)
    entries = []
    for d in dirs:
        files = _images_in(d)
        labels = _MaskIndex(d)
        for img in files:
            if img.stem.lower().endswith("_label"):
                continue
            label = labels.match(img.stem)
            if label is None or label == img:
                problems.add(
                    f"no label image for {_rel(img, root)} (expected {img.stem}_label.bmp)"
                )
                continue
            try:
                defective = bool(load_mask(label, None).any())
            except ImageLoadError as exc:
                problems.add(str(exc))
                continue
            entries.append(
                _entry(
                    root,
                    img,
                    label if defective else None,
                    class_name,
                    "defect" if defective else "good",
                    int(defective),
                )
            )
    problems.raise_if_any()
    return _sorted({"train": {}, "test": {class_name: entries}})


# ----------------------------------------------------------------------------- DAGM


def _is_dagm_native_class(d: Path) -> bool:
    splits = [_child(d, "Train"), _child(d, "Test")]
    if any(s is None for s in splits):
        return False
    return any(_child(s, "Label") is not None for s in splits)


def dagm(root: PathLike, *, strict_masks: bool = True) -> Meta:
    """DAGM 2007, in either of the two trees people have.

    1. The original competition release (also on Kaggle as ``DAGM_KaggleUpload``)::

           <root>/Class1 … Class10/{Train,Test}/NNNN.PNG
           <root>/Class1 … Class10/{Train,Test}/Label/NNNN_label.PNG   (+ Labels.txt)

       An image is anomalous exactly when it has a ``_label`` mask (as AnomalyCLIP's
       ``generate_dataset_json/DAGM.py`` decides); ``Train`` → split ``train``, ``Test`` →
       ``test``; ``specie_name`` is ``defect``/``good``.
    2. The MVTec-like conversion (AdaCLIP's ``DAGM_anomaly_detection``)::

           <root>/ClassN/{train/good, test/{good,defect}, ground_truth/defect/NNNN_label.PNG}
    """
    root = Path(root)
    if _is_dagm_native_class(root):
        native = [(root, root.name)]
    else:
        native = [(d, d.name) for d in _subdirs(root) if _is_dagm_native_class(d)]
    converted = _mvtec_class_dirs(root) if not native else []
    if converted:
        return _mvtec_like(root, "dagm", strict_masks=strict_masks, class_dirs=converted)
    if not native:
        raise LayoutError(
            f"dagm layout: no ClassN/{{Train,Test}}/Label folders (original DAGM 2007) nor "
            f"ClassN/test/… folders (MVTec-like conversion) under {root}"
        )
    meta: Meta = {"train": {}, "test": {}}
    for cls_dir, cls in native:
        for split, name in (("train", "Train"), ("test", "Test")):
            split_dir = _child(cls_dir, name)
            if split_dir is None:
                continue
            labels = _MaskIndex(_child(split_dir, "Label"))
            entries = []
            for img in _images_in(split_dir):
                mask = labels.match(img.stem) if labels else None
                if mask is not None and mask.stem.lower() == img.stem.lower():
                    mask = None  # a same-named file in Label/ is not a defect mask
                entries.append(
                    _entry(
                        root, img, mask, cls, "defect" if mask else "good", int(mask is not None)
                    )
                )
            for extra in labels.unused():
                logger.warning("dagm: mask %s matches no image", _rel(extra, root))
            meta[split][cls] = entries
    return _sorted(meta)


# ----------------------------------------------------------------------------- medical sets


def _find_yes_no(root: Path) -> Path | None:
    for d in [root, *_subdirs(root)]:
        if _child(d, "yes") is not None and _child(d, "no") is not None:
            return d
    return None


def _headct(root: Path, cls: str) -> Meta | None:
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


# ----------------------------------------------------------------------------- generic folders


def _is_folder_class(d: Path) -> bool:
    return any(_images_in(s) for s in _subdirs(d) if s.name.lower() not in MASK_DIR_NAMES)


def folder(root: PathLike, *, strict_masks: bool = True) -> Meta:
    """A plain folder tree, for your own data.

    Expected tree::

        <root>/<class>/good/*.png                    normal images (also ok/, normal/)
        <root>/<class>/<defect>/*.png                anomalous images, one folder per defect type
        <root>/<class>/ground_truth/<defect>/*.png   optional masks, same stem as the image,
                                                     optionally with _mask/_label/_gt suffix
        <root>/<class>/masks/<defect>/*.png          (alternative name of that mask folder)

    ``root`` may also be one class folder itself (``<root>/good/…``; the class is the folder
    name). Images lying directly in a class folder are ignored (their label is unknown). Every
    image goes to the ``test`` split; ``train`` is empty.
    """
    root = Path(root)
    class_dirs = (
        [(root, root.name)]
        if any(_child(root, n) is not None for n in NORMAL_DIR_NAMES)
        else [(d, d.name) for d in _subdirs(root) if _is_folder_class(d)]
    )
    if not class_dirs:
        raise LayoutError(f"folder layout: no <class>/<good|defect>/<image> folders under {root}")
    problems = _Problems("folder", root)
    test: dict[str, list[dict[str, Any]]] = {}
    for cls_dir, cls in class_dirs:
        mask_roots = [m for m in (_child(cls_dir, n) for n in MASK_DIR_NAMES) if m is not None]
        loose = _images_in(cls_dir)
        if loose:
            logger.warning(
                "folder: ignoring %d image(s) directly in %s (no good/defect folder)",
                len(loose),
                _rel(cls_dir, root) if cls_dir != root else root,
            )
        entries: list[dict[str, Any]] = []
        for sub in _subdirs(cls_dir):
            if sub.name.lower() in MASK_DIR_NAMES:
                continue
            images = _images_in(sub)
            if sub.name.lower() in NORMAL_DIR_NAMES:
                entries += [_entry(root, p, None, cls, sub.name, 0) for p in images]
                continue
            mask_dir = next((d for d in (_child(m, sub.name) for m in mask_roots) if d), None)
            entries += _anomalous_entries(
                root, images, _MaskIndex(mask_dir), cls, sub.name, strict_masks, problems
            )
        test[cls] = entries
    problems.raise_if_any()
    return _sorted({"train": {}, "test": test})


# ----------------------------------------------------------------------------- registry


LAYOUTS: dict[str, LayoutBuilder] = {
    "mvtec": mvtec,
    "visa": visa,
    "mpdd": mpdd,
    "btad": btad,
    "dtd": dtd,
    "ksdd": ksdd,
    "dagm": dagm,
    "medical": medical,
    "folder": folder,
}

_DTD_NAME = re.compile(r"^[A-Z][a-z]+_\d{3}$")
_DAGM_NAME = re.compile(r"^class\d+(_def)?$", re.IGNORECASE)


def _layout_from_class_names(names: Sequence[str], class_dirs: Sequence[Path]) -> str:
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


def _check_expected_counts(layout: str, meta: Meta) -> None:
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

    Args:
        root: dataset root.
        layout: a key of :data:`LAYOUTS` (case-insensitive); ``None`` detects it
            (:func:`detect_layout`).
        classes: keep only these classes (all by default).
        strict_masks: an anomalous image whose mask folder lacks its mask is an error
            (``True``) or an image without a mask (``False``, logged).
        **options: layout-specific options (``csv_path`` for ``visa``; ``class_name`` for
            ``ksdd`` and ``medical``).

    Returns:
        ``{"train": {cls: [entries]}, "test": {cls: [entries]}}``, paths relative to ``root``.

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
