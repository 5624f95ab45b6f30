"""Evaluation results as a printed table, Markdown, CSV and JSON (with config and versions).

Plain data in, files out: :class:`DatasetResult` is defined here (``runners.evaluate`` fills
it), so importing this module loads neither the runners nor torch (numpy only).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import OutputError
from ..files import atomic_write_text

INDUSTRIAL = ("mvtec", "visa", "mpdd", "btad", "ksdd", "sdd", "dagm", "dtd")
MEDICAL = ("headct", "brainmri", "br35h", "isic", "colondb", "clinicdb", "tn3k", "kvasir", "endo")
# The six numbers of the paper's Table 1, in its order.
TABLE_METRICS = (
    "image_auroc",
    "image_ap",
    "image_f1-max",
    "pixel_auroc",
    "pixel_aupro",
    "pixel_f1-max",
)
# What ``pixel_aupro`` means, by the name of the definition used (``--aupro``).
AUPRO_DEFINITIONS = {
    "zsad": "zero-shot AD papers' convention (AnomalyCLIP/AdaCLIP code): 200 thresholds between "
    "the class's min and max score, points with FPR < 0.3 kept, FPR rescaled to [0, 1], "
    "trapezoid",
    "mvtec": "official MVTec AD definition: exact PRO curve integrated up to FPR 0.3, divided "
    "by 0.3",
}


def domain_of(dataset_name: str) -> str:
    """``industrial``, ``medical`` or ``other``, from a dataset's folder name."""
    key = "".join(c for c in dataset_name.lower() if c.isalnum())
    if any(key.startswith(n) for n in INDUSTRIAL):
        return "industrial"
    if any(key.startswith(n) for n in MEDICAL):
        return "medical"
    return "other"


@dataclass
class DatasetResult:
    """Per-class metrics of one dataset and their mean over classes (NaNs skipped).

    ``counts[class]``: images, evaluated, anomalous, failed; ``errors``: one dict (class, path,
    error message) per image left out; ``aupro``: the AUPRO definition used (a key of
    :data:`AUPRO_DEFINITIONS`); ``device``: where the network ran (``cpu``, ``cuda:0``).
    """

    name: str
    root: str
    classes: dict[str, dict[str, float]]
    counts: dict[str, dict[str, int]]
    errors: list[dict[str, str]] = field(default_factory=list)
    aupro: str = "zsad"
    device: str | None = None

    @property
    def domain(self) -> str:
        return domain_of(self.name)

    @property
    def mean(self) -> dict[str, float]:
        keys = sorted({k for m in self.classes.values() for k in m})
        out = {}
        for k in keys:
            values = [m[k] for m in self.classes.values() if k in m and not math.isnan(m[k])]
            out[k] = float(np.mean(values)) if values else float("nan")
        return out


def printable(text: object) -> str:
    """``text`` as valid UTF-8: bytes of a file name that are not UTF-8 (held by Python as
    surrogate escapes) are shown as ``\\xff``."""
    s = str(text)
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        s = os.fsencode(s).decode("utf-8", "backslashreplace")
    return s


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
        counts = result.counts.values() if name == "mean" else [result.counts[name]]
        n = str(sum(c["evaluated"] for c in counts))
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


def render_text(results: Sequence[DatasetResult], cls: str, markdown: bool = False) -> str:
    """Every dataset's per-class table, then the summary when there are several datasets."""
    parts, headers = [], [HEADERS[m] for m in TABLE_METRICS]
    for r in results:
        title = f"## {r.name}" if markdown else f"{r.name}  ({r.root})"
        parts.append(
            printable(title)
            + "\n\n"
            + format_table(["class", "n", *headers], dataset_rows(r, cls), markdown)
        )
        if r.errors:
            parts.append(
                f"{len(r.errors)} image(s) could not be evaluated and were left out:\n"
                + "\n".join(
                    f"- {printable(e['path'])}: {printable(e['error'])}" for e in r.errors[:20]
                )
            )
    if len(results) > 1:
        title = "## Summary" if markdown else "summary"
        table = format_table(["dataset", "domain", *headers], summary_rows(results, cls), markdown)
        parts.append(f"{title}\n\n{table}")
    definitions = sorted({r.aupro for r in results})
    note = (
        f"Values in %. Image metrics from the {cls} token's scores (both are in the CSV/JSON); "
        f"pixel metrics at model resolution; AUPRO: {', '.join(definitions) or '-'}."
    )
    parts.append(note)
    return printable("\n\n".join(parts) + "\n")


def results_payload(results: Sequence[DatasetResult], config: dict) -> dict:
    """What ``results.json`` holds: the configuration (with the device actually used and the
    AUPRO definition named) and every dataset's metrics, counts and errors."""
    config = json.loads(json.dumps(config, default=str))  # a copy, plain data
    devices = sorted({r.device for r in results if r.device})
    settings = config.get("settings")
    if devices and isinstance(settings, dict):
        requested = settings.get("device")
        settings["device"] = devices[0] if len(devices) == 1 else devices
        if requested is not None and requested != settings["device"]:
            settings["device_requested"] = requested
    definitions = sorted({r.aupro for r in results})
    config["aupro"] = {d: AUPRO_DEFINITIONS.get(d, d) for d in definitions}
    return {
        "config": config,
        "datasets": {
            r.name: {
                "root": r.root,
                "domain": r.domain,
                "device": r.device,
                "aupro": {"definition": r.aupro, "description": AUPRO_DEFINITIONS.get(r.aupro)},
                "classes": r.classes,
                "mean": r.mean,
                "counts": r.counts,
                "errors": [{k: e.get(k) for k in ("class", "path", "error")} for e in r.errors],
            }
            for r in results
        },
    }


def write_results(
    results: Sequence[DatasetResult], out_dir: str | os.PathLike, config: dict, cls: str
) -> list[Path]:
    """Write ``results.md``, ``results.csv`` (every metric, both CLS tokens), ``results.json``.

    Each file is written whole (temp file, then renamed); names that are not valid UTF-8 are
    escaped (``\\xff``); CSV lines end with ``\\n``.

    Raises:
        OutputError: a file cannot be written (the files written before it stay).
    """
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(out, exc) from None
    md = out / "results.md"
    atomic_write_text(md, "# tipsomaly eval\n\n" + render_text(results, cls, markdown=True))
    keys = sorted({k for r in results for m in [*r.classes.values(), r.mean] for k in m})
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["dataset", "class", "images", "failed"] + keys)
    for r in results:
        for name, metrics in list(r.classes.items()) + [("mean", r.mean)]:
            counts = r.counts.get(name, {})
            images = counts.get("evaluated", sum(c["evaluated"] for c in r.counts.values()))
            failed = counts.get("failed", sum(c["failed"] for c in r.counts.values()))
            writer.writerow(
                [printable(r.name), printable(name), images, failed]
                + [_num(metrics.get(k)) for k in keys]
            )
    csv_path = out / "results.csv"
    atomic_write_text(csv_path, buffer.getvalue())
    json_path = out / "results.json"
    payload = _jsonable(results_payload(results, config))
    atomic_write_text(json_path, json.dumps(payload, indent=2, allow_nan=False) + "\n")
    return [md, csv_path, json_path]


def _num(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return ""
    return repr(float(value))


def _jsonable(obj: object) -> object:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {printable(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj
