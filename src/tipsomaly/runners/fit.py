"""``fit`` as a library call: normal images of one class in, a profile folder out.

Output layout under ``out_dir``::

    profile.json       class, counts, settings, thresholds per mode, versions, bank checksum
    bank.safetensors   the references' patch and CLS features (see method/profile.py)
    calibration.csv    each reference's leave-one-out image score per mode (what the
                       thresholds were computed from), with its path
    references/        a copy of each reference image, named by its SHA-256 (what
                       ``profile update`` scores again)
    report.html        (report=True) the references as thumbnails, worst first, the scores'
                       histogram with the threshold, outliers (:mod:`~tipsomaly.report.fit_page`);
                       its pictures in report-assets/

A reference whose leave-one-out score is far above the others' is named in a warning (the
rule: :func:`~tipsomaly.report.fit_page.reference_outliers`), with or without the report.

One run at a time writes into ``out_dir`` (:class:`~.lock.OutputLock`); the profile files
are written under temporary names and renamed, ``profile.json`` last, so a folder never holds
a profile whose bank does not match it.
"""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ..data.inputs import NoInputsError, expand_inputs
from ..errors import OutputError
from ..files import atomic_path
from ..method.config import (
    DEFAULT_FALSE_ALARM_RATE,
    DEFAULT_MAX_BANK,
    DEFAULT_PIXEL_FALSE_ALARM_RATE,
    MODES,
)
from ..method.detector import Detector
from ..method.fitting import fit_profile
from ..method.profile import Profile
from ..method.profile_versions import save_next_version, store_references, version_numbers
from ..report.fit_page import reference_outliers, scored_mode, write_fit_report
from ..report.html import remove_stale_report
from ..report.plots import need_matplotlib
from .lock import OutputLock

logger = logging.getLogger(__name__)

CALIBRATION_CSV = "calibration.csv"


@dataclass
class FitSummary:
    """What a :func:`run_fit` call did."""

    profile: Profile
    out_dir: Path
    references: int
    failed: list[tuple[str, str]]


def run_fit(
    detector: Detector,
    paths: Iterable[str | os.PathLike],
    *,
    class_name: str,
    out_dir: str | os.PathLike,
    false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
    pixel_false_alarm_rate: float = DEFAULT_PIXEL_FALSE_ALARM_RATE,
    augment: bool = False,
    max_bank: int = DEFAULT_MAX_BANK,
    seed: int = 0,
    batch_size: int | None = None,
    progress: bool = False,
    settings: dict[str, Any] | None = None,
    report: bool = False,
) -> FitSummary:
    """Fit a profile of ``class_name`` from the normal images named by ``paths`` and save it.

    Args:
        detector: the detector (model, prompts, image size…) the profile is for.
        paths: files, folders and glob patterns of normal images (as ``predict``).
        out_dir: the profile folder (created; an earlier profile there is replaced).
        false_alarm_rate, pixel_false_alarm_rate, augment, max_bank, seed: see
            :func:`~tipsomaly.method.fitting.fit_profile`.
        settings: extra entries for ``profile.json``'s ``settings`` (which already say how
            to rebuild the detector: model, image size, prompts, sigma, CLS token).
        report: also write ``report.html`` (needs the ``report`` extra).

    Raises:
        NoInputsError: ``paths`` name no image file.
        ProfileError: no reference image could be read.
        OutputLockedError: another run is writing into ``out_dir``.
        MissingExtraError: ``report`` without matplotlib (before any work).
        OutputError: ``out_dir`` cannot be written.
    """
    if report:
        need_matplotlib()
    paths = list(paths)
    out = Path(out_dir)
    files = expand_inputs(paths, exclude=[out])
    if not files:
        raise NoInputsError(paths)
    logger.info("%d reference image(s) of %r", len(files), class_name)
    bar = tqdm(total=len(files), unit="img", desc="fit", disable=not progress)

    def advance(done: int) -> None:
        bar.update(done - bar.n)

    with OutputLock(out):
        try:
            profile = fit_profile(
                detector,
                [str(f) for f in files],
                class_name,
                false_alarm_rate=false_alarm_rate,
                pixel_false_alarm_rate=pixel_false_alarm_rate,
                augment=augment,
                max_bank=max_bank,
                seed=seed,
                batch_size=batch_size,
                progress=advance,
            )
        finally:
            bar.close()
        if settings:
            profile.info["settings"] = {**profile.info["settings"], **settings}
        try:
            # copies of the references (by content) first: `profile update` scores them again
            store_references(out, profile.info["references"]["sources"],
                             profile.info["references"]["sha256"])  # fmt: skip
            if version_numbers(out):  # a folder with a history: this fit is its next version
                save_next_version(out, profile)
            else:
                profile.save(out)
            write_calibration_csv(out / CALIBRATION_CSV, profile)
        except OSError as exc:
            raise OutputError(getattr(exc, "filename", None) or out, exc) from None
        _warn_outliers(profile)
        if not report:
            remove_stale_report(out)
        if report:
            page = write_fit_report(
                out,
                class_name=profile.class_name,
                sources=profile.info["references"]["sources"],
                scores=profile.info.get("calibration", {}).get("scores", {}),
                thresholds=profile.thresholds.to_dict(),
                mode=profile.mode,
                settings=profile.info.get("settings"),
            )
            logger.info("report: %s", page)
    failed = [(e["path"], e["error"]) for e in profile.info["references"]["errors"]]
    return FitSummary(profile, out, profile.info["references"]["used"], failed)


def _warn_outliers(profile: Profile) -> None:
    """One warning per reference far above the others in leave-one-out score."""
    scores = profile.info.get("calibration", {}).get("scores", {})
    mode = scored_mode(scores, profile.mode)
    if mode is None:
        return
    for outlier in reference_outliers(scores[mode], profile.info["references"]["sources"]):
        logger.warning("%s", outlier.message(mode))


def write_calibration_csv(path: Path, profile: Profile) -> None:
    calib = profile.info.get("calibration", {})
    scores: dict[str, list[float]] = calib.get("scores", {})
    modes = [m for m in MODES if m in scores]
    sources = profile.info["references"]["sources"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(["path", *(f"score_{m}" for m in modes)])
        for i, source in enumerate(sources):
            writer.writerow([source, *(_cell(scores[m][i]) for m in modes)])


def _cell(value: float) -> str:
    return "" if not math.isfinite(value) else f"{value:.6f}"
