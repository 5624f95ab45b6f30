"""A class's profile: what its normal images look like, and thresholds calibrated on them.

A :class:`Profile` is the record :func:`~tipsomaly.method.fitting.fit_profile` makes from a few
known-good images of one class: a :class:`~tipsomaly.method.memory_bank.ReferenceBank` of
their features, :class:`~tipsomaly.method.decision.Thresholds` for each scoring mode, the
:class:`~tipsomaly.identity.Identity` entries its numbers depend on, and the settings to build
such a detector again (:func:`profile_settings`,
:meth:`DetectorConfig.from_profile <tipsomaly.method.config.DetectorConfig.from_profile>`).

On disk a profile is a folder: ``profile.json`` (class, counts, settings, thresholds,
versions, the bank file's SHA-256), ``bank.safetensors`` (the tensors) and, when it was fitted
with a region of interest, ``roi.png`` (its settings name it). A folder with a history
(:mod:`~tipsomaly.method.profile_versions`: ``profile update`` / ``rollback``) also holds
``versions/<n>/`` and ``references/``; its ``profile.json`` is the current version and names
that version's bank file (``bank_file.name``, relative to the folder).
"""

from __future__ import annotations

import datetime
import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import SetupMismatchError, TipsomalyError, first_line
from ..files import atomic_path, inside_folder
from ..fingerprint import digest, file_digest, tensor_digest
from ..metrics.drift import DriftReport, check_drift
from .decision import Thresholds
from .memory_bank import MemoryBank, ReferenceBank
from .names import DEFAULT_MODE, MODES

logger = logging.getLogger(__name__)

__all__ = [
    "FORMATS",
    "PROFILE_FORMAT",
    "NotCalibratedError",
    "Profile",
    "ProfileError",
    "ProfileMismatchError",
    "load_profiles",
    "profile_digest",
    "profile_folder",
    "profile_settings",
    "read_record",
]

PROFILE_FORMAT = "tipsomaly-profile-1"
#: a version written by ``profile update`` / ``rollback``: its bank lies in ``versions/<n>/``
#: (named by ``bank_file.name``), which readers of format 1 would not look for
VERSIONED_FORMAT = "tipsomaly-profile-2"
FORMATS = (PROFILE_FORMAT, VERSIONED_FORMAT)
PROFILE_JSON, BANK_FILE, ROI_FILE = "profile.json", "bank.safetensors", "roi.png"
_CALIB_FIELDS = ("threshold", "false_alarm_rate", "guaranteed_rate", "n", "k", "attainable")


class ProfileError(TipsomalyError, ValueError):
    """A profile cannot be fitted, read or used (the message names the folder or file)."""


class ProfileMismatchError(ProfileError, SetupMismatchError):
    """A profile used with a detector set up differently from the one that fitted it."""


class NotCalibratedError(ProfileError):
    """A profile has no threshold for a mode (too few references to leave one out)."""


@dataclass
class Profile:
    """One class's normal references and calibrated thresholds (see the module doc).

    Attributes:
        class_name: what the references show.
        bank: the references' features (:class:`ReferenceBank`).
        identity: the scoring entries of the fitting detector's
            :class:`~tipsomaly.identity.Identity` (``Identity.scoring()``).
        thresholds: per mode and kind (:class:`~tipsomaly.method.decision.Thresholds`).
        info: settings, counts, references, bank sizes, versions (``profile.json`` entries).
        mode: the mode a detector uses by default with this profile (``"fused"``).
        path: the folder it was loaded from or saved to, if any.
        roi: the ROI mask file it was fitted with (copied into the folder on save), if any.
    """

    class_name: str
    bank: ReferenceBank
    identity: dict[str, Any]
    thresholds: Thresholds
    info: dict[str, Any] = field(default_factory=dict)
    mode: str = DEFAULT_MODE
    path: Path | None = None
    roi: str | None = None

    # -- use -------------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return str(self.path) if self.path is not None else f"profile of {self.class_name!r}"

    def image_threshold(self, mode: str | None = None) -> float:
        """The calibrated image-score threshold of ``mode`` (flag ``score >= threshold``).

        Raises:
            NotCalibratedError: too few references to calibrate that mode.
        """
        return self._threshold(mode, "image")

    def pixel_threshold(self, mode: str | None = None) -> float:
        """The calibrated pixel threshold of ``mode`` for masks (flag ``map >= threshold``)."""
        return self._threshold(mode, "pixel")

    def _threshold(self, mode: str | None, kind: str) -> float:
        mode = mode or self.mode
        value = self.thresholds.value(mode, kind)
        if value is None:
            n = self.info.get("references", {}).get("used", "too few")
            raise NotCalibratedError(
                f"{self.name}: no {kind} threshold for mode {mode}: {n} reference image(s); "
                "the few-shot modes need at least 2 (each is scored without itself)"
            )
        return value

    # -- versions (see method/profile_versions.py) ----------------------------------------------
    @property
    def version(self) -> int:
        """1 for a freshly fitted profile, one more for each update or rollback."""
        return int(self.info.get("version", 1))

    @property
    def parent(self) -> str | None:
        """The :func:`profile_digest` of the version this one replaced (None for version 1)."""
        return self.info.get("parent")

    @property
    def calibration_scores(self) -> dict[str, list[float]]:
        """Mode → each reference's leave-one-out image score (one per reference, in reference
        order: :attr:`reference_names`); what the thresholds were computed from, and what a
        drift check compares recent scores against. Empty when not calibrated."""
        scores = self.info.get("calibration", {}).get("scores", {})
        return {mode: [float(v) for v in values] for mode, values in scores.items()}

    @property
    def reference_names(self) -> list[str]:
        """Each reference's file name (its input's name for in-memory images), in order."""
        return [Path(s).name for s in self.info.get("references", {}).get("sources", [])]

    def check_drift(
        self,
        recent_scores: Sequence[float],
        normal_reviewed: int,
        normal_flagged: int,
        mode: str | None = None,
        alpha: float = 0.01,
    ) -> DriftReport:
        """:func:`~tipsomaly.metrics.drift.check_drift` of this profile in ``mode`` (default:
        its own): recent image scores and reviews against its calibration scores and the rate
        its threshold promises (the rate asked for, or the larger one it could guarantee with
        too few references).

        Raises:
            NotCalibratedError: no image threshold in that mode.
        """
        mode = mode or self.mode
        self.image_threshold(mode)  # calibrated, or the one-line error
        calib = self.thresholds.get(mode, "image")
        assert calib is not None
        return check_drift(
            self.calibration_scores.get(mode, []),
            list(recent_scores),
            normal_reviewed,
            normal_flagged,
            calib.promised_rate,
            alpha,
        )

    # -- files ------------------------------------------------------------------------------
    def save(self, folder: str | os.PathLike) -> Path:
        """Write ``profile.json`` and ``bank.safetensors`` (and ``roi.png``) into ``folder``
        (created); each file is written under a temporary name and renamed, the JSON last."""
        out = Path(folder)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / BANK_FILE) as tmp:
            self.write_bank(tmp)
        record = self.record(out, BANK_FILE)
        with atomic_path(out / PROFILE_JSON) as tmp:
            tmp.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
        self.path = out
        if self.roi is not None:
            self.roi = str(out / ROI_FILE)
        return out

    def write_bank(self, path: str | os.PathLike) -> None:
        """The bank's tensors into the safetensors file ``path`` (written as it is named)."""
        from safetensors.torch import save_file

        tensors = {
            "patches": self.bank.patches.features,
            "patch_sources": self.bank.patches.sources.to(torch.int32),
            "cls1": self.bank.cls1.features,
            "cls2": self.bank.cls2.features,
            "cls_sources": self.bank.cls1.sources.to(torch.int32),
        }
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))

    def record(
        self, folder: Path, bank_name: str, bank_sha256: str | None = None
    ) -> dict[str, Any]:
        """``profile.json``'s content for the profile folder ``folder`` whose bank is the
        file ``folder / bank_name`` (``bank_sha256``: its SHA-256, read from it when None);
        copies the ROI mask into the folder when it is not there yet. Format 1 when the bank
        is the folder's ``bank.safetensors``, else the versioned format. ``created`` is kept
        from :attr:`info` when there (a version keeps its time), else now."""
        from .. import __version__

        info = dict(self.info)
        if self.roi is not None:  # the profile holds its own copy: it travels with it
            if Path(self.roi).resolve() != (folder / ROI_FILE).resolve():
                with atomic_path(folder / ROI_FILE) as tmp:
                    shutil.copyfile(self.roi, tmp)
            info["settings"] = {**info.get("settings", {}), "roi": ROI_FILE}
        return {
            "format": PROFILE_FORMAT if bank_name == BANK_FILE else VERSIONED_FORMAT,
            "class_name": self.class_name,
            "mode": self.mode,
            "identity": self.identity,
            "thresholds": self.thresholds.to_dict(),
            "fusion": (
                "evidence in [0, 1] per patch and per CLS token: zero-shot = abnormal "
                "probability against the class prompts; few-shot = (1 - cosine to the nearest "
                "reference) / 2; fused = their mean. map = smoothed upsampled patch evidence; "
                "image score = global (CLS) evidence + max patch evidence, in [0, 2]"
            ),
            **info,
            "bank_file": {
                "name": bank_name,
                "sha256": bank_sha256 or file_digest(folder / bank_name),
            },
            "versions": {"tipsomaly": __version__, "torch": torch.__version__},
            "created": info.get("created")
            or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        }

    @classmethod
    def load(cls, folder: str | os.PathLike, device: str | torch.device = "cpu") -> Profile:
        """Read a profile folder written by :meth:`save`: its current version (the top-level
        ``profile.json``, which an update or rollback replaces in one rename).

        Raises:
            ProfileError: a missing, unreadable, altered or malformed file (named).
        """
        folder = profile_folder(folder)
        return cls.from_record(folder, read_record(folder), device)

    @classmethod
    def from_record(
        cls, folder: Path, record: dict[str, Any], device: str | torch.device = "cpu"
    ) -> Profile:
        """The profile a checked ``profile.json`` record of the profile folder ``folder``
        describes (its bank and ROI named relative to ``folder``)."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        bank_path = folder / record["bank_file"].get("name", BANK_FILE)
        try:
            actual = file_digest(bank_path)
        except OSError as exc:
            raise ProfileError(
                f"{bank_path}: cannot read the profile's bank ({exc.strerror or exc})"
            ) from None
        if actual != record["bank_file"]["sha256"]:
            raise ProfileError(
                f"{bank_path}: the bank file is damaged or was replaced (its SHA-256 differs "
                f"from the one in {PROFILE_JSON}); fit the profile again"
            )
        try:
            t = load_file(str(bank_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ProfileError(f"{bank_path}: unreadable bank ({first_line(exc)})") from None
        bank = _bank_from_tensors(t, bank_path, torch.device(device))
        thresholds = Thresholds.from_dict(record["thresholds"])
        info = {k: v for k, v in record.items() if k not in _RECORD_OWN}
        return cls(
            class_name=record["class_name"],
            bank=bank,
            identity=record["identity"],
            thresholds=thresholds,
            info=info,
            mode=record.get("mode", DEFAULT_MODE),
            path=folder,
            roi=profile_settings(record, folder)[0].get("roi"),
        )


_RECORD_OWN = {"format", "class_name", "mode", "identity", "thresholds", "fusion"}


def profile_settings(profile: Any, folder: Path | None = None) -> tuple[dict[str, Any], str]:
    """The settings a profile was fitted with (``profile.json``'s ``settings``: model, size,
    prompts, sigma, CLS token, tiling, ROI; its files as paths that exist here) and its name.

    ``profile``: a :class:`Profile`, a profile folder, or an already read record (with
    ``folder``).

    Raises:
        ProfileError: no readable profile there.
    """
    if isinstance(profile, Profile):
        recorded, name, folder = profile.info.get("settings", {}), profile.name, profile.path
    elif isinstance(profile, dict):
        recorded, name = profile.get("settings") or {}, str(folder)
    else:
        folder = profile_folder(profile)
        recorded, name = read_record(folder).get("settings") or {}, str(folder)
    settings = dict(recorded)
    if isinstance(profile, Profile) and profile.roi is not None:
        settings["roi"] = profile.roi
    elif folder is not None and settings.get("roi"):
        roi = Path(settings["roi"])
        settings["roi"] = str(roi if roi.is_absolute() else Path(folder) / roi)
    return settings, name


def profile_folder(path: str | os.PathLike) -> Path:
    """A profile's folder, also when given its ``profile.json``."""
    path = Path(path)
    return path.parent if path.is_file() and path.name == PROFILE_JSON else path


def read_record(folder: str | os.PathLike) -> dict[str, Any]:
    """``profile.json`` of a profile folder, checked against its schema (no bank read).

    Raises:
        ProfileError: no such profile, or an unreadable or malformed ``profile.json``.
    """
    folder = profile_folder(folder)
    meta_path = folder / PROFILE_JSON
    if not meta_path.is_file():
        what = (
            "does not exist"
            if not folder.exists()
            else f"is not a profile folder (no {PROFILE_JSON})"
        )
        raise ProfileError(f"{folder} {what}; fit a profile with `tipsomaly fit`")
    try:
        record = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ProfileError(f"{meta_path}: unreadable profile ({first_line(exc)})") from None
    _check_record(record, meta_path)
    return record


def _check_record(record: object, path: Path) -> None:
    """The schema of ``profile.json``: one line naming the first problem."""

    def bad(what: str) -> ProfileError:
        return ProfileError(f"{path}: not a valid profile: {what}")

    if not isinstance(record, dict):
        raise bad("not a JSON object")
    fmt = record.get("format")
    if fmt not in FORMATS:
        number = fmt.rpartition("-")[2] if isinstance(fmt, str) else ""
        newer = fmt == f"tipsomaly-profile-{number}" and number.isdigit()
        known = ", ".join(FORMATS)
        raise ProfileError(
            f"{path}: profile format {fmt!r} was written by a newer tipsomaly (this one reads "
            f"{known}); upgrade tipsomaly"
            if newer and int(number) > len(FORMATS)
            else f"{path}: not a valid profile: format {fmt!r}, expected one of {known}"
        )
    if not isinstance(record.get("class_name"), str) or not record["class_name"]:
        raise bad("class_name must be a non-empty string")
    if record.get("mode", DEFAULT_MODE) not in MODES:
        raise bad(f"mode must be one of {', '.join(MODES)}")
    if not isinstance(record.get("identity"), dict):
        raise bad("identity must be an object")
    if not isinstance(record.get("bank_file"), dict) or not isinstance(
        record["bank_file"].get("sha256"), str
    ):
        raise bad("bank_file.sha256 missing")
    name = record["bank_file"].get("name", BANK_FILE)
    if not inside_folder(name):
        raise bad("bank_file.name must be a relative path inside the profile folder")
    thresholds = record.get("thresholds")
    if not isinstance(thresholds, dict):
        raise bad("thresholds must be an object")
    for mode, kinds in thresholds.items():
        if mode not in MODES or not isinstance(kinds, dict):
            raise bad(f"thresholds.{mode}: unknown mode or not an object")
        for kind, c in kinds.items():
            if c is None:
                continue
            if not isinstance(c, dict) or any(k not in c for k in _CALIB_FIELDS):
                raise bad(f"thresholds.{mode}.{kind}: needs {', '.join(_CALIB_FIELDS)}")
            t = c["threshold"]
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not math.isfinite(t):
                raise bad(f"thresholds.{mode}.{kind}.threshold must be a finite number")


def _bank_from_tensors(
    t: dict[str, torch.Tensor], path: Path, device: torch.device
) -> ReferenceBank:
    need = ("patches", "patch_sources", "cls1", "cls2", "cls_sources")
    missing = [k for k in need if k not in t]
    if missing:
        raise ProfileError(f"{path}: bank lacks {', '.join(missing)}")
    p, c1, c2 = t["patches"], t["cls1"], t["cls2"]
    if p.ndim != 2 or c1.ndim != 2 or c2.shape != c1.shape or p.shape[1] != c1.shape[1]:
        raise ProfileError(f"{path}: bank tensors of inconsistent shapes")
    if t["patch_sources"].shape != (p.shape[0],) or t["cls_sources"].shape != (c1.shape[0],):
        raise ProfileError(f"{path}: bank sources do not match the features")
    for k in ("patches", "cls1", "cls2"):
        if not torch.isfinite(t[k]).all():
            raise ProfileError(f"{path}: non-finite values in the bank's {k}")
    try:
        return ReferenceBank(
            MemoryBank(p.to(device), t["patch_sources"].to(device), normalized=True),
            MemoryBank(c1.to(device), t["cls_sources"].to(device), normalized=True),
            MemoryBank(c2.to(device), t["cls_sources"].to(device), normalized=True),
        )
    except ValueError as exc:
        raise ProfileError(f"{path}: {exc}") from None


def load_profiles(
    specs: Sequence[str | os.PathLike | Profile], device: str | torch.device = "cpu"
) -> dict[str, Profile]:
    """Profiles by class name; two profiles of one class are refused."""
    by_class: dict[str, Profile] = {}
    for spec in specs:
        p = spec if isinstance(spec, Profile) else Profile.load(spec, device)
        if p.class_name in by_class:
            raise ProfileError(
                f"two profiles of class {p.class_name!r}: "
                f"{by_class[p.class_name].name} and {p.name}"
            )
        by_class[p.class_name] = p
    return by_class


def profile_digest(profile: Profile) -> str:
    """An id of a profile's content (identity, bank tensors): for stores keyed on it."""
    b = profile.bank
    return digest(
        {
            "identity": profile.identity,
            "patches": tensor_digest(b.patches.features),
            "patch_sources": tensor_digest(b.patches.sources),
            "cls1": tensor_digest(b.cls1.features),
            "cls2": tensor_digest(b.cls2.features),
        }
    )
