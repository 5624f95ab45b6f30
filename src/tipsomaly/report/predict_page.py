"""``predict``'s ``report.html``: the images most anomalous first, a histogram, counts.

The page holds every row as JSON and shows :data:`PAGE_SIZE` cards at a time (a script
filters them by class and decision and pages through them; thumbnails load lazily), so a run
of 10,000 images opens at once. Each card: the thumbnail ``[image | overlay]`` with the
defect boxes (written with the image's other outputs, :data:`THUMBS`), linked to the
full-size overlay; name, class, score, threshold, decision, defect records or the error.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import plots
from .html import ASSETS, esc, image, json_script, page, settings_list, static, table, write_report
from .thumbs import SUFFIX

logger = logging.getLogger(__name__)

__all__ = ["DECISIONS", "PAGE_SIZE", "THUMBS", "decision_of", "write_predict_report"]

#: the thumbnails' folder, relative to the output folder (``THUMBS/<name>.jpg``)
THUMBS = f"{ASSETS}/thumbs"
PAGE_SIZE = 60
#: the decisions a card can show, in the order of the script's codes
DECISIONS = ("anomalous", "normal", "no decision", "error")
COLOURS = {"anomalous": plots.ANOMALOUS, "normal": plots.NORMAL, "no decision": plots.UNDECIDED}


def decision_of(row: Mapping[str, Any]) -> str:
    """One of :data:`DECISIONS` for a ``scores.csv`` row."""
    if row.get("status") != "ok":
        return "error"
    value = row.get("is_anomalous")
    return "no decision" if value is None else "anomalous" if value else "normal"


def _order(rows: Sequence[Mapping[str, Any]]) -> list[int]:
    """Row positions by image score, highest first (input order among equal scores);
    failed rows last, in input order."""
    ok = [i for i, r in enumerate(rows) if r.get("status") == "ok"]
    ok.sort(key=lambda i: -float(rows[i]["image_score"]))
    return ok + [i for i, r in enumerate(rows) if r.get("status") != "ok"]


def write_predict_report(
    out_dir: str | os.PathLike,
    rows: Sequence[Mapping[str, Any]],
    settings: Mapping[str, Any],
    *,
    overlays: str | None = "overlays",
) -> Path:
    """Write ``out_dir/report.html`` of a ``predict`` run's ``rows`` (``scores.csv``'s, as
    dicts) and ``settings`` (``scores.json``'s); ``overlays``: the folder of the full-size
    overlays the cards link to (None: none written). The thumbnails are expected in
    :data:`THUMBS` (a card without its file shows none).

    Raises:
        MissingExtraError: matplotlib (the ``report`` extra) is not installed.
        OutputError: the report cannot be written.
    """
    out = Path(out_dir)
    classes = list(dict.fromkeys(str(r["class_name"]) for r in rows))
    class_index = {c: i for i, c in enumerate(classes)}
    items = []
    for rank, i in enumerate(_order(rows), start=1):
        r = rows[i]
        name = str(r["name"])
        decision = decision_of(r)
        item: dict[str, Any] = {
            "r": rank,
            "n": name,
            "c": class_index[str(r["class_name"])],
            "s": None if decision == "error" else float(r["image_score"]),
            "d": DECISIONS.index(decision),
            "t": int(decision != "error" and (out / THUMBS / f"{name}{SUFFIX}").is_file()),
            "o": int(overlays is not None and (out / overlays / f"{name}.png").is_file()),
        }
        if r.get("threshold") is not None:
            item["h"] = float(r["threshold"])
        if r.get("error"):
            item["e"] = str(r["error"])
        defects = r.get("defects")
        if defects is not None:
            item["x"] = [[d["id"], d["peak"], d["area_px"], d["bbox"]] for d in defects]
        items.append(item)
    data = {
        "classes": classes,
        "rows": items,
        "page_size": PAGE_SIZE,
        "thumbs": THUMBS,
        "suffix": SUFFIX,
        "overlays": overlays,
    }
    hist = _histogram(rows, settings)
    counts = _counts(rows, classes)
    failed = sum(r.get("status") != "ok" for r in rows)
    subtitle = f"{len(rows)} image(s), {failed} failed"
    body = (
        '<div class="row">'
        f"<section><h2>Image scores</h2>{image(f'{ASSETS}/scores.png', 'score histogram')}"
        "</section>"
        f"<section><h2>Counts</h2>{counts}<h3>Settings</h3>{_settings(settings)}</section>"
        "</div>"
        '<section><h2>Images, most anomalous first</h2><div class="controls">'
        '<label>class <select id="f-class"><option value="">all</option></select></label>'
        '<label>decision <select id="f-decision"><option value="">all</option></select>'
        '</label><button id="prev">previous</button><span id="page"></span>'
        '<button id="next">next</button></div><div id="gallery"></div>'
        '<p class="note">Thumbnail: the image and its heat map (jet: blue 0, green 0.5, red 1'
        ", as the overlays), with the defect boxes. Click one for the full-size overlay.</p>"
        f"</section>{json_script('rows', data)}"
    )
    document = page("tipsomaly predict", subtitle, body, static("gallery.js"))
    return write_report(out, document, {f"{ASSETS}/scores.png": hist})


def _histogram(rows: Sequence[Mapping[str, Any]], settings: Mapping[str, Any]) -> bytes:
    by_decision: dict[str, list[float]] = {d: [] for d in COLOURS}
    thresholds: dict[str, float] = {}
    for r in rows:
        decision = decision_of(r)
        if decision == "error":
            continue
        by_decision[decision].append(float(r["image_score"]))
        if r.get("threshold") is not None:  # a profile's, per class
            thresholds.setdefault(f"threshold of {r['class_name']}", float(r["threshold"]))
    if not thresholds and settings.get("image_threshold") is not None:
        thresholds["image threshold"] = float(settings["image_threshold"])
    groups = [(d, np.asarray(v), COLOURS[d]) for d, v in by_decision.items() if v]
    return plots.histogram(groups, list(thresholds.items())[:8])


def _counts(rows: Sequence[Mapping[str, Any]], classes: list[str]) -> str:
    counted = Counter((str(r["class_name"]), decision_of(r)) for r in rows)
    used = [d for d in DECISIONS if any(counted[(c, d)] for c in classes)]
    body = [[c, sum(counted[(c, d)] for d in DECISIONS), *(counted[(c, d)] for d in used)]
            for c in classes]  # fmt: skip
    if len(classes) > 1:
        body.append(["all", len(rows), *(sum(counted[(c, d)] for c in classes) for d in used)])
    return table(["class", "images", *used], body)


def _settings(settings: Mapping[str, Any]) -> str:
    keys = ("model", "mode", "image_size", "tile", "roi", "roi_dir", "profiles",
            "image_threshold", "threshold", "engine", "precision", "device")  # fmt: skip
    shown = {k: settings.get(k) for k in keys}
    if shown.get("profiles"):
        shown["profiles"] = ", ".join(map(str, shown["profiles"]))
    shown["pixel threshold"] = shown.pop("threshold")
    return settings_list(shown) + f'<p class="note">{esc(settings.get("image_score", ""))}</p>'
