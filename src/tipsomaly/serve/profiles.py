"""The profile versions a running service decides with: which one decided each record, and
``POST /v1/profiles/reload`` (or SIGHUP) switching to the folders' current versions.

A reload reads every profile folder again (:meth:`Profile.load` gives a folder's current
version) off the model thread, checks them against the detector, then swaps them in under the
service's model lock: the batch running meanwhile finishes on the old versions and its records
name them; every later batch is decided by the new ones. Nothing is dropped or queued twice.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..method.profile import NotCalibratedError, Profile, profile_digest

if TYPE_CHECKING:
    from ..method.pipeline import Predictor

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProfileRef:
    """A profile version: ``id`` its digest (:func:`profile_digest`), ``version`` its number
    (None for a profile without versions), ``path`` its folder."""

    id: str | None
    version: int | None
    path: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"profile_id": self.id, "version": self.version, "path": self.path}


#: what a class without a profile is decided by
NO_PROFILE = ProfileRef(None, None, None)


def ref_of(profile: Profile) -> ProfileRef:
    version = getattr(profile, "version", None)
    path = None if profile.path is None else str(profile.path)
    return ProfileRef(profile_digest(profile), None if version is None else int(version), path)


def profiles_of(detector: Predictor) -> dict[str, Profile]:
    """The detector's profiles by class ({} for an export, whose profile is baked in)."""
    return dict(getattr(detector, "profiles", None) or {})


def versions_of(detector: Predictor) -> dict[str, ProfileRef]:
    """Class → the profile version deciding it now: the detector's profiles, or the profile
    an export holds (``export.json``'s ``profile`` record)."""
    baked = getattr(detector, "baked", None)
    if baked:
        version = baked.get("version")
        ref = ProfileRef(baked.get("digest"), None if version is None else int(version),
                         baked.get("path"))  # fmt: skip
        return {detector.class_name: ref}  # type: ignore[attr-defined]
    return {name: ref_of(p) for name, p in profiles_of(detector).items()}


def load_current(detector: Predictor) -> list[Profile]:
    """Every profile of ``detector`` read again from its folder (its current version).

    Raises:
        ProfileError: a folder cannot be read (named); nothing is swapped then.
        ValueError: the detector's profiles cannot be reloaded (an export; no folder).
    """
    profiles = profiles_of(detector)
    if not hasattr(detector, "set_profiles"):
        raise ValueError(
            "this server's model is an export: its profile is part of the export (export it "
            "again and restart to change it)"
        )
    if not profiles:
        raise ValueError("this server has no profile to reload (serve --profile DIR)")
    unsaved = [p.class_name for p in profiles.values() if p.path is None]
    if unsaved:
        raise ValueError(f"profile(s) of {', '.join(unsaved)} have no folder to reload from")
    return [Profile.load(p.path, getattr(detector, "device", "cpu")) for p in profiles.values()]


#: how many of a class's latest scores the drift check compares with its calibration scores
RECENT_SCORES = 200


def monitor(detector: Predictor, versions: dict[str, ProfileRef], store: Any) -> dict[str, Any]:
    """``GET /v1/monitor``: for each class with a profile, the drift check
    (:meth:`Profile.check_drift <tipsomaly.method.profile.Profile.check_drift>`, or an
    export's own against its engine's calibration scores) of the records
    its current version decided: the flag rate among images reviewed as normal against the
    false-alarm rate promised, and the latest :data:`RECENT_SCORES` scores against the
    calibration scores."""
    mode = detector.mode
    classes = []
    checked: dict[str, Any] = dict(profiles_of(detector))
    if getattr(detector, "baked", None):  # an export checks its baked profile itself
        checked[detector.class_name] = detector  # type: ignore[attr-defined]
    for name, profile in sorted(checked.items()):
        ref = versions.get(name, NO_PROFILE)
        recent, reviewed, flagged = store.monitor_inputs(
            name, profile_id=ref.id, mode=mode, recent=RECENT_SCORES
        )
        entry: dict[str, Any] = {
            "class_name": name,
            **ref.to_dict(),
            "mode": mode,
            "recent_scores": len(recent),
            "normal_reviewed": reviewed,
            "normal_flagged": flagged,
        }
        try:
            entry.update(profile.check_drift(recent, reviewed, flagged, mode).to_dict())
        except NotCalibratedError:
            entry.update(drifted=None, reasons=["no calibrated threshold: nothing promised"])
        classes.append(entry)
    return {"classes": classes, "recent_window": RECENT_SCORES}


__all__ = [
    "NO_PROFILE",
    "RECENT_SCORES",
    "monitor",
    "ProfileRef",
    "load_current",
    "profiles_of",
    "ref_of",
    "versions_of",
]
