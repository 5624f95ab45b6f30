"""Profile versions: a profile folder keeps its history; updates add normal references.

Layout of a profile folder with a history::

    profile.json           the current version (the same text as versions/<n>/profile.json)
    bank.safetensors       the fitted bank (version 1, as ``fit`` wrote it)
    roi.png                the ROI mask, when fitted with one (the same for every version)
    versions/<n>/          version n: profile.json + bank.safetensors, never changed again
    references/<sha256>.*  a copy of every reference image, by content (updates re-read them)

A fitted folder has no ``versions/`` yet: it is version 1. The first update copies it into
``versions/1/``. Writing version n: its folder is written under a temporary name and renamed
(one step), then the top-level ``profile.json`` is replaced (one rename): a reader
(:meth:`Profile.load <tipsomaly.method.profile.Profile.load>`) sees the old version or the new
one, never half of one. Each record names its bank file (``bank_file.name``), its version, and
its parent version's :func:`~tipsomaly.method.profile.profile_digest` (``parent``).

:func:`update_profile` adds normal reference images: it fits the class again on the old
references (their stored copies) and the new ones, with the profile's own settings, so the bank
and thresholds are exactly those of a fresh fit on all of them: every reference's leave-one-out
score is computed against the enlarged bank (the old scores are not reused: the bank each was
left out of has changed), the same conformal rule makes the thresholds, and above the bank limit
the same coreset is drawn. The bank alone cannot give this: it holds a coreset of the patches
(and their augmented views), not each reference's features as a query, and tiled references are
read again in any case.

:func:`rollback` writes a new version whose content (bank, thresholds, references) is that of an
older one (``restored_from``): the history only grows, and the decisions are the old version's.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..files import atomic_path, atomic_write_text
from ..fingerprint import file_digest
from ..identity import diff
from .detector import Detector, profile_keys
from .fitting import fit_profile
from .names import DEFAULT_FALSE_ALARM_RATE, DEFAULT_PIXEL_FALSE_ALARM_RATE, MODES
from .profile import (
    BANK_FILE,
    PROFILE_JSON,
    Profile,
    ProfileError,
    ProfileMismatchError,
    profile_digest,
    profile_folder,
    read_record,
)

logger = logging.getLogger(__name__)

__all__ = [
    "REFERENCES_DIR",
    "reference_images",
    "save_next_version",
    "VERSIONS_DIR",
    "VersionEntry",
    "check_additions",
    "history",
    "load_version",
    "rollback",
    "store_references",
    "update_profile",
    "version_numbers",
]

VERSIONS_DIR, REFERENCES_DIR = "versions", "references"
_SHA256 = re.compile("[0-9a-f]{64}")


@dataclass(frozen=True)
class VersionEntry:
    """One line of a profile's history.

    ``thresholds``: mode → image threshold (None where not calibrated); ``references``: how
    many reference images; ``restored_from``: the version a rollback copied; ``added``: the
    reference images this version added (their paths as given).
    """

    version: int
    created: str | None
    digest: str
    parent: str | None
    references: int
    thresholds: dict[str, float | None]
    restored_from: int | None
    added: list[str]
    current: bool


def version_numbers(folder: str | os.PathLike) -> list[int]:
    """The versions kept in ``folder/versions/``, ascending (empty for a fitted folder)."""
    versions = profile_folder(folder) / VERSIONS_DIR
    if not versions.is_dir():
        return []
    return sorted(
        int(d.name) for d in versions.iterdir() if d.name.isdigit() and (d / PROFILE_JSON).is_file()
    )


def load_version(folder: str | os.PathLike, version: int, device: Any = "cpu") -> Profile:
    """Version ``version`` of a profile folder (the current one when it has no history).

    Raises:
        ProfileError: no such version, or its files are unreadable or damaged.
    """
    root = profile_folder(folder)
    numbers = version_numbers(root)
    if not numbers:
        current = Profile.load(root, device)
        if version == current.version:
            return current
        numbers = [current.version]
    if version not in numbers:
        raise ProfileError(
            f"{root} has no version {version} (it has {', '.join(map(str, numbers))})"
        )
    return Profile.from_record(root, read_record(root / VERSIONS_DIR / str(version)), device)


def history(folder: str | os.PathLike) -> list[VersionEntry]:
    """Every version of a profile folder, oldest first (see :class:`VersionEntry`)."""
    root = profile_folder(folder)
    current = read_record(root)
    numbers = version_numbers(root)
    records = {n: read_record(root / VERSIONS_DIR / str(n)) for n in numbers}
    if not records:
        records = {int(current.get("version", 1)): current}
    entries = []
    for n, record in records.items():
        digest = record.get("digest") or profile_digest(Profile.from_record(root, record))
        thresholds = {
            mode: (record["thresholds"].get(mode, {}).get("image") or {}).get("threshold")
            for mode in MODES
        }
        entries.append(
            VersionEntry(
                version=n,
                created=record.get("created"),
                digest=digest,
                parent=record.get("parent"),
                references=int(record.get("references", {}).get("used", 0)),
                thresholds=thresholds,
                restored_from=record.get("restored_from"),
                added=list(record.get("references", {}).get("added", [])),
                current=n == int(current.get("version", 1))
                and record["bank_file"] == current["bank_file"],
            )
        )
    return entries


# -- writing ---------------------------------------------------------------------------------------
def _write_version(root: Path, profile: Profile, n: int, bank: Path | None = None) -> str:
    """Write ``versions/<n>/`` whole (a temporary folder renamed): the bank (``profile``'s
    tensors, or a byte copy of the file ``bank``) and ``profile.json``; returns its text."""
    versions = root / VERSIONS_DIR
    versions.mkdir(exist_ok=True)
    final = versions / str(n)
    if final.exists():
        raise ProfileError(f"{final} exists: another update wrote version {n} meanwhile; try again")
    tmp = versions / f".{n}.{uuid.uuid4().hex}.tmp"
    tmp.mkdir()
    try:
        if bank is None:
            profile.write_bank(tmp / BANK_FILE)
        else:
            shutil.copyfile(bank, tmp / BANK_FILE)
        profile.info["version"] = n
        profile.info["digest"] = profile_digest(profile)
        name = f"{VERSIONS_DIR}/{n}/{BANK_FILE}"
        record = profile.record(root, name, file_digest(tmp / BANK_FILE))
        text = json.dumps(record, indent=2, allow_nan=False) + "\n"
        atomic_write_text(tmp / PROFILE_JSON, text)
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return text


def _commit(root: Path, profile: Profile, bank: Path | None = None) -> Profile:
    """Write ``profile`` as the folder's next version and make it the current one; on an
    error the version folders this call wrote are removed again."""
    record = read_record(root)
    current = Profile.from_record(root, record)
    numbers = version_numbers(root)
    written: list[Path] = []
    try:
        if not numbers:  # the fitted version joins the history first (its own bank copy)
            current.info.setdefault("created", record.get("created"))
            bank_1 = root / record["bank_file"]["name"]
            _write_version(root, current, current.version, bank=bank_1)
            written.append(root / VERSIONS_DIR / str(current.version))
            numbers = [current.version]
        profile.info["parent"] = record.get("digest") or profile_digest(current)
        n = max(numbers) + 1
        text = _write_version(root, profile, n, bank)
        written.append(root / VERSIONS_DIR / str(n))
        with atomic_path(root / PROFILE_JSON) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except BaseException:
        for folder in written:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    profile.path = root
    logger.info("%s: version %d is current", root, profile.version)
    return profile


def save_next_version(folder: str | os.PathLike, profile: Profile) -> Profile:
    """A fresh fit saved into a folder that keeps a history: written as its next version
    (parent: the current one), so ``profile history`` and ``rollback`` stay true; the earlier
    versions are kept. Returns ``profile``, now current."""
    return _commit(profile_folder(folder), profile)


def rollback(folder: str | os.PathLike, to: int | None = None, device: Any = "cpu") -> Profile:
    """Make version ``to`` (default: the one before the current) current again, as a new
    version with its content (bank file byte for byte, thresholds, references): the same
    decisions. Returns the new current profile.

    Raises:
        ProfileError: no history, no such version, or ``to`` is already current.
    """
    root = profile_folder(folder)
    current = read_record(root)
    version = int(current.get("version", 1))
    numbers = version_numbers(root) or [version]
    if to is None and len(numbers) < 2:
        raise ProfileError(f"{root} has a single version ({version}): nothing to roll back to")
    to = version - 1 if to is None else int(to)
    if to not in numbers:
        raise ProfileError(f"{root} has no version {to} (it has {', '.join(map(str, numbers))})")
    if to == version:
        raise ProfileError(f"{root}: version {to} is already the current one")
    old = load_version(root, to, device)
    for key in ("created", "parent", "digest", "version", "added"):
        old.info.pop(key, None)
    old.info["restored_from"] = to
    old.info["references"] = {**old.info["references"], "added": []}
    return _commit(root, old, bank=root / VERSIONS_DIR / str(to) / BANK_FILE)


# -- updates ---------------------------------------------------------------------------------------
def _readable(path: Path, what: str) -> str:
    """SHA-256 of ``path``, or a one-line ProfileError naming it."""
    try:
        return file_digest(path)
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


def reference_images(root: Path, record: dict[str, Any]) -> tuple[list[Path], list[str]]:
    """Each current reference's image (its stored copy, else its recorded path) and SHA-256;
    ``record``: the profile's ``profile.json`` (or its ``info``: the ``references`` entry is
    read). Used by updates, and by int8 exports to calibrate on the references.

    Raises:
        ProfileError: a reference is neither stored nor found, or changed since the fit.
    """
    refs = record.get("references", {})
    sources = refs.get("sources", [])
    shas = refs.get("sha256") or [None] * len(sources)
    paths, digests = [], []
    for source, sha in zip(sources, shas, strict=True):
        if sha is not None and not _SHA256.fullmatch(str(sha)):
            raise ProfileError(f"{root}: not a valid profile: references.sha256 {sha!r}")
        stored = None if sha is None else root / _stored_name(sha, source)
        path = stored if stored is not None and stored.is_file() else Path(source)
        if not path.is_file():
            raise ProfileError(
                f"{root}: reference {source} is not stored in the profile and not found there; "
                "an update scores every reference again and needs its image: fit anew"
            )
        actual = _readable(path, "a reference image")
        if sha is not None and actual != sha:
            raise ProfileError(
                f"{path}: reference image changed since the profile was fitted (SHA-256 differs)"
            )
        paths.append(path)
        digests.append(actual)
    return paths, digests


def _new_references(
    paths: Sequence[str | os.PathLike], known: dict[str, str]
) -> tuple[list[Path], list[str]]:
    """The new images and their SHA-256; a duplicate (of a reference or of another new
    image) is refused. ``known``: SHA-256 → the reference it belongs to."""
    seen = {sha: f"reference {source} of the profile" for sha, source in known.items()}
    out, digests = [], []
    for given in paths:
        path = Path(given)
        if not path.is_file():
            raise ProfileError(f"{path}: no such image file")
        sha = _readable(path, "the image")
        if sha in seen:
            raise ProfileError(
                f"{path}: a duplicate of {seen[sha]} (same SHA-256); nothing was added"
            )
        seen[sha] = f"{path}, also given"
        out.append(path)
        digests.append(sha)
    return out, digests


def _stored_name(sha: str, source: str | os.PathLike) -> str:
    """Where a reference's copy lies in its profile folder: by content, with its suffix."""
    return f"{REFERENCES_DIR}/{sha}{Path(source).suffix.lower()}"


def store_references(
    folder: str | os.PathLike, paths: Sequence[str | os.PathLike], digests: Sequence[str | None]
) -> list[Path]:
    """Copy each reference image into ``folder/references/<sha256><suffix>`` (skipped when
    there, or when it has no SHA-256: an in-memory image), so that updates find every
    reference wherever the profile travels. Returns the files it created."""
    root = profile_folder(folder)
    created = []
    for path, sha in zip(paths, digests, strict=True):
        if sha is None:
            continue
        target = root / _stored_name(sha, path)
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(target) as tmp:
                shutil.copyfile(path, tmp)
            created.append(target)
    return created


def check_additions(
    folder: str | os.PathLike, add_normal: Sequence[str | os.PathLike]
) -> tuple[list[Path], list[str]]:
    """What :func:`update_profile` checks before any model runs: the profile's format, every
    reference image found (by content), and the new images readable files, none a duplicate.
    Returns the current references' images and SHA-256 (old first, then new).

    Raises:
        ProfileError: the first problem, in one line naming the file.
    """
    root = profile_folder(folder)
    record = read_record(root)
    if not add_normal:
        raise ProfileError(f"{root}: no image to add")
    old_paths, old_shas = reference_images(root, record)
    sources = list(record["references"]["sources"])
    new_paths, new_shas = _new_references(add_normal, dict(zip(old_shas, sources, strict=True)))
    return old_paths + new_paths, old_shas + new_shas


def update_profile(
    detector: Detector,
    folder: str | os.PathLike,
    add_normal: Sequence[str | os.PathLike],
    *,
    batch_size: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> Profile:
    """Add the normal images ``add_normal`` to the profile in ``folder``: a new version with
    them in the bank and thresholds recalibrated over old and new references (see the module
    doc), its parent the current version. Returns it (now current).

    ``detector`` must be set up as the profile's (``DetectorConfig.from_profile(folder)``,
    without using the profile). Nothing is written unless every image is read and scored.

    Raises:
        ProfileError: an unreadable or duplicate image (named), a reference image missing, a
            profile folder of a newer format; ``ImageLoadError``: an image that cannot be
            decoded or breaks the pixel limit.
        ProfileMismatchError: the detector is set up differently from the profile.
    """
    root = profile_folder(folder)
    current = Profile.load(root, detector.device)
    problems = diff(current.identity, detector.identity.scoring(), profile_keys(current.identity))
    if problems:
        raise ProfileMismatchError(
            f"{root} was fitted with another setup: {'; '.join(problems)}; update it with the "
            "profile's settings"
        )
    paths, shas = check_additions(root, add_normal)
    sources = list(current.info["references"]["sources"])
    calib = current.info.get("calibration", {})
    bank = current.info["bank"]
    fitted = fit_profile(
        detector,
        [str(p) for p in paths],
        current.class_name,
        false_alarm_rate=calib.get("false_alarm_rate", DEFAULT_FALSE_ALARM_RATE),
        pixel_false_alarm_rate=calib.get("pixel_false_alarm_rate", DEFAULT_PIXEL_FALSE_ALARM_RATE),
        augment=bool(bank.get("augment", False)),
        max_bank=int(bank["max_bank"]),
        seed=int(bank.get("seed", 0)),
        batch_size=batch_size,
        on_error="raise",
        progress=progress,
    )
    fitted.mode = current.mode
    fitted.info["settings"] = current.info["settings"]
    added = [str(p) for p in paths[len(sources) :]]
    fitted.info["references"].update(sources=sources + added, sha256=shas, added=added)
    created: list[Path] = []
    try:
        created = store_references(root, paths, shas)
        return _commit(root, fitted)
    except BaseException:  # the copies this update made belong to no version
        for path in created:
            path.unlink(missing_ok=True)
        raise
