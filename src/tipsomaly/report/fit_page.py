"""``fit``'s ``report.html`` in the profile folder, and the outlier rule for references.

The page: the references as thumbnails with their leave-one-out scores (what the thresholds
were computed from; ``profile.json``'s ``calibration.scores``), worst first; the histogram of
those scores with the image threshold and the false-alarm rate it guarantees; the thresholds
of every mode; and a warning naming any reference that :func:`reference_outliers` flags.

The outlier rule (robust z-score, Iglewicz and Hoaglin's modified z-score): with the
references' leave-one-out scores ``s`` in the profile's mode, its median ``m`` and median
absolute deviation ``MAD``, a reference is flagged when ``(s_i - m) / max(1.4826 MAD,
MIN_SPREAD) > OUTLIER_Z`` (3.5), and only with :data:`MIN_REFERENCES` or more references.
1.4826 MAD estimates the standard deviation of normal data without being moved by the outlier
itself; ``MIN_SPREAD`` keeps near-identical references (MAD about 0) from flagging tiny
differences. A defective or differently taken reference scores far above the others (its
patches are far from every other reference's) and, with few references, is the one that sets
the conformal threshold.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.images import ImageLoadError, load_image
from ..method.names import MODES
from . import plots
from .html import ASSETS, esc, image, page, settings_list, table, write_report
from .thumbs import SUFFIX, THUMB, small, thumbnail_bytes

logger = logging.getLogger(__name__)

__all__ = ["MIN_REFERENCES", "OUTLIER_Z", "Outlier", "reference_outliers", "write_fit_report"]

OUTLIER_Z = 3.5
#: the smallest spread (score units) the robust z-score divides by
MIN_SPREAD = 0.01
#: fewer references than this: no outlier is flagged (a median of 3 says little)
MIN_REFERENCES = 4


@dataclass(frozen=True)
class Outlier:
    """A reference flagged by :func:`reference_outliers`: its position in the references,
    path, leave-one-out ``score``, the references' ``median`` and its robust ``z``."""

    index: int
    source: str
    score: float
    median: float
    z: float

    def message(self, mode: str) -> str:
        return (
            f"reference {self.source}: its leave-one-out {mode} score {self.score:.4f} is far "
            f"above the other references' (median {self.median:.4f}, robust z {self.z:.1f} > "
            f"{OUTLIER_Z}): it may be defective or unlike them (lighting, position, another "
            "part); look at it, and if it is no good example fit again without it (with few "
            "references it sets the threshold)"
        )


def robust_z(scores: Sequence[float]) -> np.ndarray:
    """``(s - median) / max(1.4826 MAD, MIN_SPREAD)`` of 1-D ``scores`` (see the module doc)."""
    s = np.asarray(scores, dtype=np.float64)
    median = float(np.median(s))
    spread = max(1.4826 * float(np.median(np.abs(s - median))), MIN_SPREAD)
    return (s - median) / spread


def reference_outliers(scores: Sequence[float], sources: Sequence[str]) -> list[Outlier]:
    """The references whose leave-one-out ``scores`` are far above the others' (the module
    doc's rule), highest first; ``sources``: their paths, in the same order."""
    if len(scores) < MIN_REFERENCES:
        return []
    z = robust_z(scores)
    median = float(np.median(np.asarray(scores, dtype=np.float64)))
    flagged = [i for i in np.argsort(-z, kind="stable") if z[i] > OUTLIER_Z]
    return [
        Outlier(int(i), str(sources[i]), float(scores[i]), median, float(z[i])) for i in flagged
    ]


def scored_mode(scores: Mapping[str, Sequence[float]], mode: str) -> str | None:
    """The mode whose scores the page and the rule use: the profile's, else the first
    calibrated one (zero-shot with one reference), None without scores."""
    if mode in scores:
        return mode
    return next((m for m in MODES if m in scores), None)


def write_fit_report(
    folder: str | os.PathLike,
    *,
    class_name: str,
    sources: Sequence[str],
    scores: Mapping[str, Sequence[float]],
    thresholds: Mapping[str, Mapping[str, Any]],
    mode: str,
    settings: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``folder/report.html`` of a fitted profile.

    Args:
        sources: the references used, in the profile's order.
        scores: per mode, each reference's leave-one-out image score (``calibration.scores``).
        thresholds: per mode, ``{"image": Calibration dict | None, "pixel": ... }``
            (``profile.json``'s ``thresholds``).
        mode: the profile's default mode.
        settings: shown as they are (model, image size, tiling...).

    Raises:
        MissingExtraError: matplotlib (the ``report`` extra) is not installed.
        OutputError: the report cannot be written.
    """
    out = Path(folder)
    used = scored_mode(scores, mode)
    main = [float(v) for v in scores[used]] if used else []
    outliers = reference_outliers(main, sources) if used else []
    z = robust_z(main) if main else np.zeros(len(sources))
    assets: dict[str, bytes] = {}
    order = np.argsort(-np.asarray(main), kind="stable") if main else range(len(sources))
    flagged = {o.index for o in outliers}
    cards = []
    for rank, i in enumerate(order, start=1):
        i = int(i)
        thumb = f"{ASSETS}/references/{i:05d}{SUFFIX}"
        try:
            picture = small(load_image(sources[i]), THUMB)
        except ImageLoadError as exc:
            logger.warning("report: no thumbnail of %s: %s", sources[i], exc)
            picture = None
        if picture is not None:
            assets[thumb] = thumbnail_bytes(picture)
        values = " · ".join(f"{m} {float(scores[m][i]):.4f}" for m in MODES if m in scores)
        flag = '<div class="flag">outlier: look at it</div>' if i in flagged else ""
        decision = "anomalous" if i in flagged else "normal"
        img = image(thumb, sources[i], cls="") if picture is not None else ""
        cards.append(
            f'<div class="card" data-index="{i}" data-decision="{decision}" '
            f'data-source="{esc(sources[i])}" data-score="{main[i] if main else ""}">{img}'
            f'<div class="head"><span class="name">{esc(Path(sources[i]).name)}</span>'
            f'<span class="score">#{rank}</span></div>'
            f'<div class="meta">{esc(sources[i])}</div><div class="meta">{esc(values)}'
            f"{'' if not main else f' · robust z {z[i]:.1f}'}</div>{flag}</div>"
        )
    image_calibration = (thresholds.get(used) or {}).get("image") if used else None
    assets[f"{ASSETS}/calibration.png"] = _histogram(main, used, image_calibration, flagged)
    warning = ""
    if outliers:
        items = "".join(f"<li>{esc(o.message(used or mode))}</li>" for o in outliers)
        warning = (
            f'<section class="warning" id="outliers"><h2>{len(outliers)} reference(s) look '
            f"unlike the others</h2><ul>{items}</ul>"
            f'<p class="note">Rule: robust z = (score − median) / max(1.4826 × MAD, '
            f"{MIN_SPREAD}) over the references' leave-one-out {esc(used)} scores; flagged "
            f"above {OUTLIER_Z} (with {MIN_REFERENCES} or more references).</p></section>"
        )
    body = (
        warning
        + '<div class="row"><section><h2>Leave-one-out scores</h2>'
        + image(f"{ASSETS}/calibration.png", "calibration score histogram")
        + f'<p class="note">{esc(image_calibration["note"]) if image_calibration else ""}</p>'
        + f"</section><section><h2>Thresholds</h2>{_thresholds(thresholds, mode)}"
        + f"<h3>Settings</h3>{_settings(settings or {})}</section></div>"
        + f"<section><h2>References, worst first ({esc(used or '-')} score)</h2>"
        + '<p class="note">Each reference scored against the bank without itself (as a new '
        "image would be), the scores the thresholds come from.</p>"
        + f'<div class="cases">{"".join(cards)}</div></section>'
    )
    subtitle = f"profile of {class_name!r}: {len(sources)} reference(s)"
    return write_report(out, page("tipsomaly fit", subtitle, body), assets)


def _histogram(scores: list[float], mode: str | None, calibration: Any, flagged: set[int]) -> bytes:
    lines = []
    title = f"{len(scores)} reference(s), {mode or 'no'} mode"
    if calibration:
        lines.append(("image threshold", float(calibration["threshold"])))
        title += (
            f": false-alarm rate <= {calibration['guaranteed_rate']:.3g} guaranteed "
            f"(asked {calibration['false_alarm_rate']:g})"
        )
    values = np.asarray(scores)
    out = np.isin(np.arange(values.size), sorted(flagged))
    groups = [
        ("references", values[~out], plots.NORMAL),
        ("outliers", values[out], plots.ANOMALOUS),
    ]
    return plots.histogram(groups, lines, xlabel="leave-one-out image score", title=title)


def _thresholds(thresholds: Mapping[str, Mapping[str, Any]], mode: str) -> str:
    rows = []
    for m in MODES:
        image_c = (thresholds.get(m) or {}).get("image")
        pixel_c = (thresholds.get(m) or {}).get("pixel")
        if image_c is None:
            rows.append([m + (" (default)" if m == mode else ""), "not calibrated", "", "", ""])
            continue
        rows.append([
            m + (" (default)" if m == mode else ""),
            float(image_c["threshold"]),
            None if pixel_c is None else float(pixel_c["threshold"]),
            f"{image_c['false_alarm_rate']:g}",
            f"{image_c['guaranteed_rate']:.4g}",
        ])  # fmt: skip
    header = ["mode", "image threshold", "pixel threshold", "asked rate", "guaranteed rate"]
    return table(header, rows)


def _settings(settings: Mapping[str, Any]) -> str:
    keys = ("model", "image_size", "prompt_type", "sigma", "cls", "tile", "roi", "device", "dtype")
    return settings_list({k: settings.get(k) for k in keys})
