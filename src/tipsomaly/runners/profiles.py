"""``profile update``, ``history`` and ``rollback`` as library calls on a profile folder.

An update or rollback writes a new version (see :mod:`tipsomaly.method.profile_versions`)
under the folder's :class:`~.lock.OutputLock` (one writer at a time), then rewrites the
folder's ``calibration.csv`` for the new current version. Where the images to add come from
is the caller's: paths given (``--add-normal``); a records database can hand its reviewed
images to :func:`run_profile_update` the same way.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..data.inputs import NoInputsError, expand_inputs
from ..errors import OutputError
from ..method.config import DetectorConfig
from ..method.detector import Detector
from ..method.profile import Profile, profile_digest, profile_folder, read_record
from ..method.profile_versions import (
    VersionEntry,
    check_additions,
    history,
    rollback,
    update_profile,
)
from .fit import CALIBRATION_CSV, write_calibration_csv
from .lock import OutputLock

logger = logging.getLogger(__name__)

__all__ = ["ProfileChange", "profile_detector", "profile_history", "run_profile_rollback"]
__all__ += ["run_profile_update"]


@dataclass
class ProfileChange:
    """What an update or rollback made: the new current version and the one it replaced."""

    profile: Profile
    folder: Path
    previous_version: int
    added: list[str]

    @property
    def digest(self) -> str:
        return profile_digest(self.profile)


def profile_detector(folder: str | os.PathLike, given: dict[str, Any] | None = None) -> Detector:
    """A detector set up as the profile in ``folder`` was fitted (its recorded settings, its
    recorded dtype unless ``given`` says otherwise), not using the profile: what an update
    scores the references with. ``given``: options set by the user (device, dtype, batch
    size, offline...); one that contradicts a recorded setting is refused."""
    recorded = read_record(folder).get("settings", {})
    given = {k: v for k, v in (given or {}).items() if v is not None}
    if "dtype" not in given and isinstance(recorded.get("dtype"), str):
        given["dtype"] = recorded["dtype"]  # the references are scored as the fit scored them
    config = DetectorConfig.from_profile(str(profile_folder(folder)), given=given)
    return Detector.from_config(config.replace(profiles=()))


def run_profile_update(
    folder: str | os.PathLike,
    add_normal: Iterable[str | os.PathLike],
    *,
    detector: Detector | None = None,
    given: dict[str, Any] | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> ProfileChange:
    """Add the normal images named by ``add_normal`` (files, folders, glob patterns) to the
    profile in ``folder`` as a new version (:func:`update_profile`). The images are checked
    (readable, no duplicate) before the model loads: ``detector``, or one set up as the
    profile with the options ``given`` (:func:`profile_detector`).

    Raises:
        NoInputsError: ``add_normal`` names no image file.
        ProfileError, ImageLoadError, ProfileMismatchError: see :func:`update_profile`;
            nothing is written then.
        OutputLockedError: another run is writing the profile.
    """
    root = profile_folder(folder)
    specs = list(add_normal)
    files = [str(f) for f in expand_inputs(specs, exclude=[root])]
    if not files:
        raise NoInputsError(specs)
    check_additions(root, files)
    previous = int(read_record(root).get("version", 1))
    references = int(read_record(root)["references"]["used"])
    detector = detector or profile_detector(root, given)
    bar = tqdm(total=references + len(files), unit="img", desc="update", disable=not progress)

    def advance(done: int) -> None:
        bar.update(done - bar.n)

    with OutputLock(root):
        try:
            profile = update_profile(detector, root, files, batch_size=batch_size, progress=advance)
        finally:
            bar.close()
        _calibration_csv(root, profile)
    return ProfileChange(profile, root, previous, files)


def run_profile_rollback(folder: str | os.PathLike, to: int | None = None) -> ProfileChange:
    """Make version ``to`` (default: the one before the current) current again, as a new
    version (:func:`~tipsomaly.method.profile_versions.rollback`)."""
    root = profile_folder(folder)
    previous = int(read_record(root).get("version", 1))
    with OutputLock(root):
        profile = rollback(root, to)
        _calibration_csv(root, profile)
    return ProfileChange(profile, root, previous, [])


def profile_history(folder: str | os.PathLike) -> list[VersionEntry]:
    """Every version of the profile in ``folder``, oldest first."""
    return history(folder)


def _calibration_csv(root: Path, profile: Profile) -> None:
    try:
        write_calibration_csv(root / CALIBRATION_CSV, profile)
    except OSError as exc:  # the version is written: only the table is missing
        raise OutputError(root / CALIBRATION_CSV, exc) from None
