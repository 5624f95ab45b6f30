"""The ``meta.json`` dataset description (AnomalyCLIP/AdaCLIP convention): schema, checks, I/O.

Format::

    {
      "train": {"<class>": [<entry>, ...], ...},
      "test":  {"<class>": [<entry>, ...], ...}
    }
    <entry> = {"img_path": "bottle/test/broken_large/000.png",
               "mask_path": "bottle/ground_truth/broken_large/000_mask.png",
               "cls_name": "bottle", "specie_name": "broken_large", "anomaly": 1}

* Paths are relative to the dataset root (the folder holding ``meta.json``); ``/`` separators
  (``\\`` is accepted and converted).
* **The root is a boundary.** A path that leaves the root — ``../``, an absolute path
  elsewhere, or a symlink inside the root pointing outside it (symlinks are resolved) — is an
  error naming the entry, unless ``allow_outside_root=True``: a ``meta.json`` from elsewhere
  cannot make tipsomaly read arbitrary files. An absolute path inside the root is accepted.
* File names are kept byte for byte: a name that is not UTF-8 is written as ``\\udcNN``
  escapes (Python's ``surrogateescape``), which Python's ``json`` reads back to the same file.
* Nesting deeper than :data:`MAX_JSON_DEPTH` levels is refused (a ``meta.json`` is 4 deep).
* ``img_path``, ``mask_path`` and ``anomaly`` are required in every entry. ``anomaly`` is 0
  (normal) or 1 (anomalous); JSON ``true``/``false`` are accepted.
* ``mask_path`` is ``""`` (or ``null``) for normal images; a mask given for a normal image is
  ignored (the reference code uses an all-zero mask for them). An anomalous image may have an
  empty ``mask_path`` (classification-only sets such as HeadCT, BrainMRI, Br35H): its
  :attr:`Sample.has_mask` is ``False``.
* ``cls_name`` defaults to the class key and must equal it when present; ``specie_name`` (the
  defect folder, ``good`` for normal images) defaults to ``good`` / ``""``.
* Split names are matched exactly, then case-insensitively (AnomalyCLIP's DAGM file uses
  ``Train``/``Test``).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import TipsomalyError
from ..files import atomic_path
from .names import display_path, relative_name

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]

META_FILENAME = "meta.json"
REQUIRED_KEYS: tuple[str, ...] = ("img_path", "mask_path", "anomaly")
_MAX_LISTED_PROBLEMS = 20
#: Deepest JSON nesting accepted in ``meta.json`` (a valid one is 4 levels deep: object, split,
#: class list, entry); deeper input is refused before it is parsed.
MAX_JSON_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


class MetaError(TipsomalyError, ValueError):
    """``meta.json`` is missing, malformed or inconsistent with the files on disk.

    Attributes:
        path: the ``meta.json`` file concerned.
        problems: one line per problem; each names the split, class, entry index and path.
    """

    def __init__(self, path: PathLike, problems: Sequence[str] | str) -> None:
        self.path = Path(path)
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        shown = self.problems[:_MAX_LISTED_PROBLEMS]
        more = len(self.problems) - len(shown)
        if len(self.problems) == 1:
            text = f"{self.path}: {shown[0]}"
        else:
            lines = "\n".join(f"  - {p}" for p in shown)
            tail = f"\n  ... and {more} more" if more else ""
            text = f"{self.path}: {len(self.problems)} problems:\n{lines}{tail}"
        super().__init__(text)

    def __reduce__(self):
        return (type(self), (self.path, self.problems))


@dataclass(frozen=True)
class Sample:
    """One image of a dataset split.

    Attributes:
        image_path: the image file (dataset root joined with ``img_path``).
        mask_path: the ground-truth mask file, or ``None`` (normal image, or an anomalous image
            without a pixel annotation).
        class_name: the object/texture class (the key in ``meta.json``).
        specie_name: the defect type (``good`` for normal images; may be empty).
        anomaly: 1 anomalous, 0 normal.
    """

    image_path: Path
    mask_path: Path | None
    class_name: str
    specie_name: str
    anomaly: int

    @property
    def has_mask(self) -> bool:
        """True when a pixel-level mask file is given."""
        return self.mask_path is not None

    def to_entry(self, root: PathLike) -> dict[str, Any]:
        """The ``meta.json`` entry of this sample (paths relative to ``root`` when inside it)."""
        return {
            "img_path": relative_name(self.image_path, Path(root)),
            "mask_path": relative_name(self.mask_path, Path(root)) if self.mask_path else "",
            "cls_name": self.class_name,
            "specie_name": self.specie_name,
            "anomaly": int(self.anomaly),
        }


@dataclass
class DatasetMeta:
    """The samples of one split of a dataset, by class (classes in ``meta.json`` order).

    Attributes:
        root: dataset root; sample paths are resolved against it.
        split: the split read (``"test"``, ``"train"``).
        samples: class name → samples, in file order.
    """

    root: Path
    split: str
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        """Class names, in order."""
        return list(self.samples)

    def __len__(self) -> int:
        return sum(len(v) for v in self.samples.values())

    def __iter__(self) -> Iterator[Sample]:
        for items in self.samples.values():
            yield from items

    def all_samples(self) -> list[Sample]:
        """Every sample, class by class."""
        return list(self)

    def counts(self) -> dict[str, tuple[int, int]]:
        """class → (number of normal, number of anomalous) samples."""
        anomalous = {c: sum(s.anomaly == 1 for s in items) for c, items in self.samples.items()}
        return {c: (len(self.samples[c]) - n, n) for c, n in anomalous.items()}

    def to_dict(self) -> dict[str, dict[str, list[dict[str, Any]]]]:
        """``{split: {class: [entries]}}``, ready for :func:`write_meta`."""
        return {
            self.split: {
                cls: [s.to_entry(self.root) for s in items] for cls, items in self.samples.items()
            }
        }


def meta_path_for(root: PathLike) -> Path:
    """``root/meta.json``, or ``root`` itself when it is a ``.json`` file."""
    p = Path(root)
    if p.suffix.lower() == ".json" and not p.is_dir():
        return p
    return p / META_FILENAME


def _load_json(path: Path) -> Any:
    if not path.is_file():
        root = display_path(path.parent)
        hint = f"; describe the dataset first: tipsomaly data meta {root} [--layout NAME]"
        reason = "is not a file" if path.exists() else "not found"
        raise MetaError(path, f"{reason}{hint}")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MetaError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise MetaError(path, f"cannot read ({exc.strerror or exc})") from None
    except MemoryError:
        raise MetaError(path, "too large to read into memory") from None
    depth = _json_depth(text)
    if depth > MAX_JSON_DEPTH:
        raise MetaError(
            path, f"JSON nested {depth}+ levels deep (at most {MAX_JSON_DEPTH}; a meta.json is 4)"
        )
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise MetaError(
            path, f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except (RecursionError, MemoryError):
        raise MetaError(path, "JSON too deeply nested or too large to parse") from None


_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def _json_depth(text: str, stop: int = MAX_JSON_DEPTH) -> int:
    """Deepest ``[``/``{`` nesting of JSON ``text`` outside strings (stops past ``stop``)."""
    depth = deepest = 0
    for match in _JSON_TOKENS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            deepest = max(deepest, depth)
            if deepest > stop:
                return deepest
        elif token in "]}":
            depth -= 1
    return deepest


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # no permission on a parent, NUL in the name
        return False


def _find_split(data: Mapping[str, Any], split: str, path: Path) -> str:
    if split in data:
        return split
    folded = [k for k in data if isinstance(k, str) and k.lower() == split.lower()]
    if len(folded) == 1:
        logger.info("%s: using split %r for %r", path, folded[0], split)
        return folded[0]
    raise MetaError(path, f"no split {split!r}; splits present: {sorted(map(str, data))}")


def _parse_entry(
    raw: Any, *, where: str, key: str, root: Path, problems: list[str], boundary: Path | None = None
) -> Sample | None:
    """Validate one entry; append problems (prefixed with ``where``) and return a Sample or None."""
    if not isinstance(raw, Mapping):
        problems.append(f"{where}: entry must be a JSON object, got {type(raw).__name__}")
        return None
    missing = [k for k in REQUIRED_KEYS if k not in raw]
    if missing:
        shown = raw.get("img_path", "?")
        shown = display_path(shown) if isinstance(shown, str) else _brief(shown)
        problems.append(f"{where} ({shown}): missing key(s) {', '.join(map(repr, missing))}")
        return None

    img = raw["img_path"]
    if not isinstance(img, str) or not img.strip():
        problems.append(f"{where}: 'img_path' must be a non-empty string, got {_brief(img)}")
        return None
    where = f"{where} ({display_path(img)})"

    ok = True
    mask = "" if raw["mask_path"] is None else raw["mask_path"]
    if not isinstance(mask, str):
        problems.append(f"{where}: 'mask_path' must be a string, got {type(mask).__name__}")
        ok = False

    anomaly = int(raw["anomaly"]) if isinstance(raw["anomaly"], bool) else raw["anomaly"]
    if not isinstance(anomaly, int) or anomaly not in (0, 1):
        problems.append(f"{where}: 'anomaly' must be 0 or 1, got {_brief(raw['anomaly'])}")
        ok = False

    cls_name = raw.get("cls_name", key)
    if not isinstance(cls_name, str):
        problems.append(f"{where}: 'cls_name' must be a string, got {type(cls_name).__name__}")
        ok = False
    elif cls_name != key:
        problems.append(
            f"{where}: 'cls_name' is {_brief(cls_name)} but the entry is listed under {key!r}"
        )
        ok = False

    specie = raw.get("specie_name")
    specie = ("good" if anomaly == 0 else "") if specie is None else specie
    if not isinstance(specie, str):
        problems.append(f"{where}: 'specie_name' must be a string, got {type(specie).__name__}")
        ok = False
    if not ok:
        return None

    image_path = root / img.replace("\\", "/")
    mask_path: Path | None = None
    if mask.strip():
        if anomaly == 1:
            mask_path = root / mask.replace("\\", "/")
        else:
            logger.debug("%s: normal image with a mask_path; the mask is ignored", where)
    if boundary is not None:
        for name, path in (("img_path", image_path), ("mask_path", mask_path)):
            if path is not None and not _inside(path, boundary):
                problems.append(
                    f"{where}: {name} {_brief(raw[name])} leads outside the dataset root "
                    f"{display_path(root)} (relative paths must stay inside it; "
                    "allow_outside_root=True allows it)"
                )
                ok = False
    if not ok:
        return None
    return Sample(image_path, mask_path, key, specie, int(anomaly))


def _inside(path: Path, boundary: Path) -> bool:
    """True when ``path`` (symlinks resolved) is ``boundary`` or below it."""
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError, ValueError):
        return False
    return resolved == boundary or boundary in resolved.parents


def _boundary(root: Path) -> Path:
    try:
        return root.resolve()
    except (OSError, RuntimeError, ValueError) as exc:
        raise MetaError(root, f"cannot resolve the dataset root ({exc})") from None


def _brief(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters and made UTF-8 safe, for messages."""
    try:
        text = repr(value)
    except RecursionError:
        text = f"<deeply nested {type(value).__name__}>"
    text = display_path(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def parse_split(
    data: Any,
    root: PathLike,
    split: str = "test",
    classes: Sequence[str] | None = None,
    *,
    check_files: bool = True,
    allow_empty: bool = False,
    source: PathLike = META_FILENAME,
    allow_outside_root: bool = False,
) -> DatasetMeta:
    """Validate the already-parsed JSON ``data`` and return one split as a :class:`DatasetMeta`.

    ``root``: the folder the relative paths refer to; ``source``: the file named in error
    messages; ``allow_empty``: accept classes with no images; the rest as for :func:`read_meta`.

    Raises:
        MetaError: listing every problem found, each naming split, class, index and path.
    """
    src = Path(source)
    root = Path(root)
    boundary = None if allow_outside_root else _boundary(root)
    if not isinstance(data, Mapping):
        raise MetaError(src, f"top level must be a JSON object, got {type(data).__name__}")
    split_key = _find_split(data, split, src)
    by_class = data[split_key]
    if not isinstance(by_class, Mapping):
        raise MetaError(
            src, f"split {split_key!r} must map class names to lists, got {type(by_class).__name__}"
        )
    available = [str(k) for k in by_class]
    if classes is None:
        wanted = available
    else:
        wanted = list(dict.fromkeys(classes))
        absent = [c for c in wanted if c not in by_class]
        if absent:
            raise MetaError(
                src,
                f"class(es) {', '.join(map(repr, absent))} not in split {split_key!r}; "
                f"available: {', '.join(available) or '(none)'}",
            )
    if not wanted and not allow_empty:
        raise MetaError(src, f"split {split_key!r} lists no classes")

    problems: list[str] = []
    samples: dict[str, list[Sample]] = {}
    seen: dict[Path, str] = {}
    for cls in wanted:
        entries = by_class[cls]
        if not isinstance(entries, list):
            problems.append(
                f"{split_key}/{cls}: must be a list of entries, got {type(entries).__name__}"
            )
            continue
        if not entries and not allow_empty:
            problems.append(f"{split_key}/{cls}: class has no images")
            continue
        items: list[Sample] = []
        for i, raw in enumerate(entries):
            where = f"{split_key}/{cls}[{i}]"
            sample = _parse_entry(
                raw, where=where, key=cls, root=root, problems=problems, boundary=boundary
            )
            if sample is None:
                continue
            if check_files:
                if not _is_file(sample.image_path):
                    problems.append(f"{where}: image not found: {display_path(sample.image_path)}")
                    continue
                if sample.mask_path is not None and not _is_file(sample.mask_path):
                    problems.append(f"{where}: mask not found: {display_path(sample.mask_path)}")
                    continue
            if sample.image_path in seen:
                logger.warning(
                    "%s: %s is listed twice (also at %s)",
                    display_path(src),
                    display_path(sample.image_path),
                    seen[sample.image_path],
                )
            else:
                seen[sample.image_path] = where
            items.append(sample)
        samples[cls] = items
    if problems:
        raise MetaError(src, problems)
    meta = DatasetMeta(root=root, split=split_key, samples=samples)
    without_mask = sum(1 for s in meta if s.anomaly == 1 and not s.has_mask)
    if without_mask:
        logger.info(
            "%s: %d anomalous image(s) without a mask (image-level labels only)", src, without_mask
        )
    return meta


def read_meta(
    root: PathLike,
    split: str = "test",
    classes: Sequence[str] | None = None,
    check_files: bool = True,
    *,
    allow_outside_root: bool = False,
) -> DatasetMeta:
    """Read and validate ``root/meta.json`` and return one split.

    ``root``: the folder holding ``meta.json``, or the ``.json`` file itself (its folder is
    then the root). ``classes``: those to keep, in this order (None: all, in file order).
    ``allow_outside_root``: accept paths leading outside the dataset root (``../``, absolute
    paths elsewhere, symlinks pointing out); by default they are errors.

    Raises:
        MetaError: missing file, invalid JSON (with line and column), missing key, wrong type,
            ``anomaly`` not 0/1, missing image or mask, a class without images, an unknown
            requested class (the available ones are listed), a path leaving the root, JSON
            nested deeper than :data:`MAX_JSON_DEPTH`. Every problem names the entry.
    """
    path = meta_path_for(root)
    data = _load_json(path)
    return parse_split(
        data,
        path.parent,
        split,
        classes,
        check_files=check_files,
        source=path,
        allow_outside_root=allow_outside_root,
    )


def validate_meta(
    data: Any, root: PathLike, *, check_files: bool = False, allow_outside_root: bool = False
) -> None:
    """Check every split of a ``meta.json`` dict (empty classes allowed).

    Raises:
        MetaError: as :func:`read_meta`.
    """
    src = meta_path_for(root)
    if not isinstance(data, Mapping):
        raise MetaError(src, f"top level must be a JSON object, got {type(data).__name__}")
    problems: list[str] = []
    for split in data:
        try:
            parse_split(
                data,
                src.parent,
                str(split),
                check_files=check_files,
                allow_empty=True,
                source=src,
                allow_outside_root=allow_outside_root,
            )
        except MetaError as exc:
            problems.extend(exc.problems)
    if problems:
        raise MetaError(src, problems)


def write_meta(
    root: PathLike,
    meta: Mapping[str, Any] | DatasetMeta,
    *,
    validate: bool = True,
    allow_outside_root: bool = False,
) -> Path:
    """Write ``meta.json`` (keys sorted, 4-space indent, UTF-8, atomically) under ``root``.

    File names that are not UTF-8 are written as ``\\udcNN`` escapes (logged), which
    :func:`read_meta` turns back into the same file names.

    ``root``: the dataset root, or the target ``.json`` path; ``meta``: ``{split: {class:
    [entries]}}`` (as :func:`tipsomaly.data.layouts.build_meta` returns) or a
    :class:`DatasetMeta` (its single split); ``validate``: check the structure first (not the
    files), no path leading outside the root unless ``allow_outside_root``. Returns the path.

    Raises:
        MetaError: the structure is invalid (nothing is written).
    """
    path = meta_path_for(root)
    data = meta.to_dict() if isinstance(meta, DatasetMeta) else meta
    if validate:
        validate_meta(data, path.parent, check_files=False, allow_outside_root=allow_outside_root)
    text = json.dumps(data, indent=4, sort_keys=True, ensure_ascii=False) + "\n"
    escaped = len(_SURROGATE.findall(text))
    if escaped:
        # lone surrogates only occur inside JSON strings: escaping them keeps valid JSON
        text = _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
        logger.warning(
            "%s: some file names are not UTF-8; their %d odd byte(s) are written as \\udcNN "
            "escapes (Python reads them back; other tools may not)",
            display_path(path),
            escaped,
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    n = sum(len(v) for split in data.values() if isinstance(split, Mapping) for v in split.values())
    logger.info("wrote %s (%d entries)", display_path(path), n)
    return path
