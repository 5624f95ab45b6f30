"""Per-image score tables: ``scores.csv`` appended and flushed row by row, ``scores.json`` last.

Columns (in this order): ``path`` (the input as found), ``class_name``, ``image_score`` (the
chosen CLS token's score, in [0, 2], higher = more anomalous), ``score_cls1``, ``score_cls2``,
``is_anomalous`` (only with an image threshold), ``threshold`` and ``mode`` (only with a
few-shot profile: the image threshold applied and how the image was scored), ``status``
(``ok`` | ``error``), ``error`` (the problem, naming the file; empty when ok) and ``name``
(the output name: the overlay is ``overlays/<name>.png``); then, with a pixel threshold,
``defects`` (the image's defect records, :mod:`tipsomaly.method.defects`: their number in the
CSV, the records in the JSON; empty when the image has no pixel threshold), and with an ROI
``note`` (remarks, e.g. a resized ROI mask). In the CSV, scores have 6
decimals and are empty for failed images, ``is_anomalous`` is ``true``/``false``; in the
JSON they are numbers / booleans / ``null``.
CSV lines end with ``\\n``; text that is not valid UTF-8 (file names with undecodable bytes,
held by Python as surrogate escapes) is written escaped (``\\xff``). A disk error raises
:class:`~tipsomaly.errors.OutputError` naming the file; the rows written before it stay.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import OutputError
from ..files import atomic_write_text
from ..method.defects import DEFECT_COLUMNS
from .results import printable

CSV_NAME = "scores.csv"
JSON_NAME = "scores.json"
#: one row per defect record (with a pixel threshold): the image's name, path and class, then
#: the record's columns (:data:`DEFECT_CSV_COLUMNS`)
DEFECTS_CSV_NAME = "defects.csv"
#: ``--defects-format coco``: every defect as a COCO results entry (RLE segmentation)
COCO_JSON_NAME = "defects_coco.json"
DEFECT_CSV_COLUMNS = ("name", "path", "class_name", *DEFECT_COLUMNS)

SCORE_COLUMNS = ("image_score", "score_cls1", "score_cls2")


def columns(
    with_is_anomalous: bool = False,
    with_profile: bool = False,
    with_defects: bool = False,
    with_note: bool = False,
) -> list[str]:
    """The table's column names, in order (``with_profile`` implies ``is_anomalous``)."""
    cols = ["path", "class_name", *SCORE_COLUMNS]
    if with_is_anomalous or with_profile:
        cols.append("is_anomalous")
    if with_profile:
        cols += ["threshold", "mode"]
    cols += ["status", "error", "name"]
    if with_defects:
        cols.append("defects")
    if with_note:
        cols.append("note")
    return cols


def defect_rows(row: Mapping[str, Any]) -> list[list[str]]:
    """The ``defects.csv`` lines of one table row (its ``defects`` records)."""
    out = []
    for d in row.get("defects") or []:  # the columns of DEFECT_CSV_COLUMNS
        values = [*(row.get(k) for k in ("name", "path", "class_name")), d["id"], *d["bbox"]]
        values += [d["area_px"], d.get("area_mm2"), d["peak"], d["mean"], *d["centroid"]]
        out.append([_csv_cell(_clean(v)) for v in values])
    return out


def coco_results(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """COCO results entries (``image_id`` = the row's output name, one category ``1``
    = defect, ``bbox`` [x, y, width, height], ``score`` = the defect's peak) of every
    defect record that carries an RLE."""
    out = []
    for row in rows:
        for d in row.get("defects") or []:
            if "rle" not in d:
                continue
            x0, y0, x1, y1 = d["bbox"]
            out.append(
                {
                    "image_id": row.get("name"),
                    "file_name": row.get("path"),
                    "category_id": 1,
                    "segmentation": d["rle"],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": d["area_px"],
                    "score": d["peak"],
                }
            )
    return out


def _open_csv(path: Path, header: Sequence[str]) -> tuple[IO[str], Any]:
    """A CSV file created (replacing an older one) with its header line, and its writer."""
    fh = open(path, "w", newline="", encoding="utf-8")  # noqa: SIM115 - the table closes it
    writer = csv.writer(fh, lineterminator="\n")
    writer.writerow(header)
    fh.flush()
    return fh, writer


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if not math.isfinite(value) else f"{value:.6f}"
    if isinstance(value, list):  # defect records: their number
        return str(len(value))
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _clean(value: Any) -> Any:
    return printable(value) if isinstance(value, str) else value


class ScoreTable:
    """Writes the rows of one run to ``out_dir/scores.csv`` as they come and ``scores.json`` on
    :meth:`write_json`.

    The CSV is created (replacing an older one) when the table is opened; every :meth:`add`
    writes one line and flushes it, so an interrupted run keeps every row computed so far.
    ``with_defects`` adds the ``defects`` column and ``defects.csv`` (one line per record,
    written with its image's row); ``coco`` also writes ``defects_coco.json`` with the JSON.
    Use it as a context manager, or call :meth:`close`.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike,
        *,
        with_is_anomalous: bool = False,
        with_profile: bool = False,
        with_defects: bool = False,
        with_note: bool = False,
        coco: bool = False,
    ) -> None:
        self.out_dir = Path(out_dir)
        self.columns = columns(with_is_anomalous, with_profile, with_defects, with_note)
        self.rows: list[dict[str, Any]] = []
        self.csv_path = self.out_dir / CSV_NAME
        self.json_path = self.out_dir / JSON_NAME
        self.defects_path = self.out_dir / DEFECTS_CSV_NAME if with_defects else None
        self.coco_path = self.out_dir / COCO_JSON_NAME if with_defects and coco else None
        self._defects_fh = None
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._fh, self._writer = _open_csv(self.csv_path, self.columns)
        except OSError as exc:
            raise OutputError(self.csv_path, exc) from None
        if self.defects_path is not None:
            try:
                self._defects_fh, self._defects_writer = _open_csv(
                    self.defects_path, DEFECT_CSV_COLUMNS
                )
            except OSError as exc:
                self._fh.close()
                raise OutputError(self.defects_path, exc) from None

    def add(self, row: Mapping[str, Any]) -> None:
        """Append one row (a mapping with every column; extra keys are an error) and flush.

        Raises:
            OutputError: the CSV cannot be written (full or read-only disk).
        """
        extra = set(row) - set(self.columns)
        if extra:
            raise ValueError(f"unknown columns {sorted(extra)}; expected {self.columns}")
        ordered = {c: _clean(row.get(c)) for c in self.columns}
        try:
            self._writer.writerow([_csv_cell(ordered[c]) for c in self.columns])
            self._fh.flush()
        except OSError as exc:
            raise OutputError(self.csv_path, exc) from None
        if self._defects_fh is not None:
            try:
                self._defects_writer.writerows(defect_rows(ordered))
                self._defects_fh.flush()
            except OSError as exc:
                raise OutputError(self.defects_path, exc) from None
        self.rows.append(ordered)

    @property
    def n_ok(self) -> int:
        return sum(r["status"] == "ok" for r in self.rows)

    @property
    def n_failed(self) -> int:
        return sum(r["status"] != "ok" for r in self.rows)

    def write_json(self, *, complete: bool, settings: Mapping[str, Any] | None = None) -> Path:
        """Write every row so far to ``scores.json`` (atomically: a temp file, then renamed).

        ``complete`` is False while the run is going on and when it stopped early (an error
        or an interrupt).

        Raises:
            OutputError: the file cannot be written.
        """
        doc = {
            "complete": complete,
            "summary": {"images": len(self.rows), "ok": self.n_ok, "failed": self.n_failed},
            "settings": {k: _clean(v) for k, v in (settings or {}).items()},
            "columns": self.columns,
            "results": [{k: _json_value(v) for k, v in r.items()} for r in self.rows],
        }
        atomic_write_text(self.json_path, json.dumps(doc, indent=2, allow_nan=False) + "\n")
        if self.coco_path is not None:
            coco = json.dumps(coco_results(self.rows), indent=2, allow_nan=False) + "\n"
            atomic_write_text(self.coco_path, coco)
        return self.json_path

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()
        if self._defects_fh is not None and not self._defects_fh.closed:
            self._defects_fh.close()

    def __enter__(self) -> ScoreTable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
