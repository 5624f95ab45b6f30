"""``eval``'s ``report.html``: per dataset and class, where the method wins and loses.

For each class: the image ROC curve (the ``--cls`` token's scores), the pixel PRO curve up to
the AUPRO's FPR limit (0.3), the class's Table-1 row, and the worst-ranked images as
thumbnails with their maps: the normal images scored highest (false positives at any
threshold that flags them) and the anomalous images scored lowest (false negatives), each
``[image | map]`` with the ground-truth outline. The curves come from
:mod:`tipsomaly.metrics` (:func:`~tipsomaly.metrics.roc_curve`,
:func:`~tipsomaly.metrics.pro_curve`), computed where the metrics are
(:mod:`tipsomaly.runners.row_metrics`) and handed in as :class:`ClassPlots` records.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.images import ImageLoadError, load_image
from . import plots
from .html import ASSETS, esc, image, page, table, write_report
from .results import HEADERS, TABLE_METRICS, DatasetResult, dataset_rows
from .thumbs import SUFFIX, thumbnail, thumbnail_bytes

logger = logging.getLogger(__name__)

__all__ = ["PRO_LIMIT", "Case", "ClassPlots", "write_eval_report"]

#: the FPR up to which the AUPRO integrates (both definitions), and the PRO plot shows
PRO_LIMIT = 0.3


@dataclass
class Case:
    """One worst-ranked image: its ``path``, ``kind`` (``"false positive"`` /
    ``"false negative"``), image ``score``, (S, S) float32 ``map`` at model resolution and
    (S, S) bool ground-truth ``mask`` (None for a normal image)."""

    path: str
    kind: str
    score: float
    map: np.ndarray
    mask: np.ndarray | None = None


@dataclass
class ClassPlots:
    """What a class's section plots: ``roc`` ``(fpr, tpr)`` and its ``auroc``; ``pro``
    ``(fpr, pro)`` (None: no pixel metrics, or undefined) and its ``aupro`` of definition
    ``aupro_kind``; the worst ``cases``."""

    roc: tuple[np.ndarray, np.ndarray] | None
    auroc: float
    pro: tuple[np.ndarray, np.ndarray] | None
    aupro: float
    aupro_kind: str
    cases: list[Case] = field(default_factory=list)


def _slug(*parts: str) -> str:
    """A file-name-safe name of a dataset/class pair (unique enough with its index)."""
    return "-".join(re.sub(r"[^A-Za-z0-9_.-]+", "_", p)[:40] for p in parts)


def _value(v: float) -> str:
    return "undefined" if v is None or not math.isfinite(v) else f"{100 * v:.1f}%"


def write_eval_report(
    out_dir: str | os.PathLike, results: Sequence[DatasetResult], cls: str
) -> Path:
    """Write ``out_dir/report.html`` of ``results`` (each with a ``plots`` mapping, class →
    :class:`ClassPlots`; classes without one show their table row only); ``cls``: the CLS
    token of the image metrics shown.

    Raises:
        MissingExtraError: matplotlib (the ``report`` extra) is not installed.
        OutputError: the report cannot be written.
    """
    out = Path(out_dir)
    assets: dict[str, bytes] = {}
    sections = []
    header = ["class", "n", *(HEADERS[m] for m in TABLE_METRICS)]
    for d, result in enumerate(results):
        by_class = getattr(result, "plots", None) or {}
        rows = dataset_rows(result, cls)
        blocks = []
        for c, class_name in enumerate(result.classes):
            row = next(r for r in rows if r[0] == class_name)
            block = f'<div class="classblock" data-class="{esc(class_name)}">'
            block += f"<h3>{esc(class_name)}</h3>{table(header, [row])}"
            p = by_class.get(class_name)
            if p is not None:
                slug = f"{d}-{c}-{_slug(result.name, class_name)}"
                roc_file = f"{ASSETS}/roc-{slug}.png"
                fpr, tpr = p.roc if p.roc is not None else (np.zeros(0), np.zeros(0))
                assets[roc_file] = plots.curve(
                    fpr, tpr, xlabel="false positive rate (images)",
                    ylabel="true positive rate", diagonal=True,
                    title=f"image ROC ({cls}): AUROC {_value(p.auroc)}",
                )  # fmt: skip
                figures = image(roc_file, f"image ROC of {class_name}", cls="plot roc")
                if p.pro is not None or math.isfinite(p.aupro):
                    pro_file = f"{ASSETS}/pro-{slug}.png"
                    x, y = _upto(*(p.pro or (np.zeros(0), np.zeros(0))), PRO_LIMIT)
                    assets[pro_file] = plots.curve(
                        x, y, xlabel="false positive rate (pixels)",
                        ylabel="per-region overlap", xmax=PRO_LIMIT,
                        title=f"PRO to FPR {PRO_LIMIT}: AUPRO {_value(p.aupro)} ({p.aupro_kind})",
                    )  # fmt: skip
                    figures += image(pro_file, f"PRO curve of {class_name}", cls="plot pro")
                block += f'<div class="row">{figures}</div>'
                block += _cases(p.cases, slug, assets)
            blocks.append(block + "</div>")
        mean = next(r for r in rows if r[0] == "mean")
        sections.append(
            f'<section data-dataset="{esc(result.name)}"><h2>{esc(result.name)}</h2>'
            f'<p class="note">{esc(result.root)}</p>{table(header, [mean])}'
            f"{''.join(blocks)}</section>"
        )
    subtitle = f"{len(results)} dataset(s) · values in %"
    note = (
        '<p class="note">Worst images: the normal images scored highest (false positives at '
        "any threshold that flags them) and the anomalous ones scored lowest (false "
        "negatives); each shows the image and its map at model resolution (jet, [0, 1]), the "
        "ground truth outlined in white.</p>"
    )
    return write_report(out, page("tipsomaly eval", subtitle, note + "".join(sections)), assets)


def _upto(x: np.ndarray, y: np.ndarray, limit: float) -> tuple[np.ndarray, np.ndarray]:
    """The points of a curve with FPR ``x <= limit``, in increasing FPR."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    keep = x <= limit
    return x[keep], y[keep]


def _cases(cases: Sequence[Case], slug: str, assets: dict[str, bytes]) -> str:
    if not cases:
        return ""
    cards = []
    for k, case in enumerate(cases):
        name = f"{ASSETS}/cases/{slug}-{k}{SUFFIX}"
        try:
            picture = thumbnail(load_image(case.path), case.map, mask=case.mask)
        except ImageLoadError as exc:
            logger.warning("report: no thumbnail of %s: %s", case.path, exc)
            picture = None
        img = ""
        if picture is not None:
            assets[name] = thumbnail_bytes(picture)
            img = image(name, case.path, cls="")
        decision = "anomalous" if case.kind == "false negative" else "normal"
        cards.append(
            f'<div class="card case" data-kind="{case.kind}" data-decision="{decision}">{img}'
            f'<div class="head"><span class="name">{esc(Path(case.path).name)}</span>'
            f'<span class="badge">{esc(case.kind)}</span></div>'
            f'<div class="meta">score <span class="score">{case.score:.4f}</span> · '
            f"{esc(case.path)}</div></div>"
        )
    return f'<h3>Worst images</h3><div class="cases">{"".join(cards)}</div>'
