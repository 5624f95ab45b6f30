"""Evaluation results as a printed table, Markdown, CSV and JSON (with config and versions)."""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path

from ..runners.evaluate import TABLE_METRICS, DatasetResult

HEADERS = {
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1-max": "I-F1max",
    "pixel_auroc": "P-AUROC",
    "pixel_aupro": "P-AUPRO",
    "pixel_f1-max": "P-F1max",
}


def _pct(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{100 * value:.1f}"


def _key(metric: str, cls: str) -> str:
    return f"{metric}_{cls}" if metric.startswith("image_") else metric


def dataset_rows(result: DatasetResult, cls: str) -> list[list[str]]:
    """Rows ``class, n, six metrics (%)`` for each class and the mean, image metrics of ``cls``."""
    rows = []
    for name, metrics in list(result.classes.items()) + [("mean", result.mean)]:
        n = (
            str(sum(c["evaluated"] for c in result.counts.values()))
            if name == "mean"
            else str(result.counts[name]["evaluated"])
        )
        rows.append([name, n] + [_pct(metrics.get(_key(m, cls))) for m in TABLE_METRICS])
    return rows


def summary_rows(results: Sequence[DatasetResult], cls: str) -> list[list[str]]:
    """Table-1 style: one row per dataset (its class mean), plus industrial / medical averages."""
    rows = [
        [r.name, r.domain] + [_pct(r.mean.get(_key(m, cls))) for m in TABLE_METRICS]
        for r in results
    ]
    for domain in ("industrial", "medical"):
        members = [r for r in results if r.domain == domain]
        if len(members) < 2:
            continue
        cells = []
        for m in TABLE_METRICS:
            values = [r.mean.get(_key(m, cls)) for r in members]
            values = [v for v in values if v is not None and not math.isnan(v)]
            cells.append(_pct(sum(values) / len(values)) if values else "–")
        rows.append([f"{domain} average", domain] + cells)
    return rows


def format_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool = False
) -> str:
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]

    def fmt(r: Sequence[str]) -> str:  # first column left-aligned, numbers right-aligned
        return "  ".join(
            str(c).rjust(w) if i else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )

    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def dataset_header() -> list[str]:
    return ["class", "n"] + [HEADERS[m] for m in TABLE_METRICS]


def summary_header() -> list[str]:
    return ["dataset", "domain"] + [HEADERS[m] for m in TABLE_METRICS]


def render_text(results: Sequence[DatasetResult], cls: str, markdown: bool = False) -> str:
    """Every dataset's per-class table, then the summary when there are several datasets."""
    parts = []
    for r in results:
        title = f"## {r.name}" if markdown else f"{r.name}  ({r.root})"
        parts.append(
            title + "\n\n" + format_table(dataset_header(), dataset_rows(r, cls), markdown)
        )
        if r.errors:
            parts.append(
                f"{len(r.errors)} image(s) could not be read and were left out:\n"
                + "\n".join(f"- {e['path']}: {e['error']}" for e in r.errors[:20])
            )
    if len(results) > 1:
        title = "## Summary" if markdown else "summary"
        parts.append(
            title + "\n\n" + format_table(summary_header(), summary_rows(results, cls), markdown)
        )
    note = (
        f"Values in %. Image metrics from the {cls} token's scores (both are in the CSV/JSON); "
        "pixel metrics at model resolution."
    )
    parts.append(note)
    return "\n\n".join(parts) + "\n"


def write_results(
    results: Sequence[DatasetResult], out_dir: str | os.PathLike, config: dict, cls: str
) -> list[Path]:
    """Write ``results.md``, ``results.csv`` (every metric, both CLS tokens), ``results.json``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "results.md"
    md.write_text("# tipsomaly eval\n\n" + render_text(results, cls, markdown=True))
    keys = sorted({k for r in results for m in [*r.classes.values(), r.mean] for k in m})
    csv_path = out / "results.csv"
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["dataset", "class", "images", "failed"] + keys)
        for r in results:
            for name, metrics in list(r.classes.items()) + [("mean", r.mean)]:
                counts = r.counts.get(name, {})
                images = counts.get("evaluated", sum(c["evaluated"] for c in r.counts.values()))
                failed = counts.get("failed", sum(c["failed"] for c in r.counts.values()))
                writer.writerow(
                    [r.name, name, images, failed] + [_num(metrics.get(k)) for k in keys]
                )
    json_path = out / "results.json"
    payload = {
        "config": config,
        "datasets": {
            r.name: {
                "root": r.root,
                "domain": r.domain,
                "classes": r.classes,
                "mean": r.mean,
                "counts": r.counts,
                "errors": r.errors,
            }
            for r in results
        },
    }
    json_path.write_text(json.dumps(_jsonable(payload), indent=2) + "\n")
    return [md, csv_path, json_path]


def _num(value: float | None) -> str:
    if value is None or math.isnan(value):
        return ""
    return repr(float(value))


def _jsonable(obj):
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
