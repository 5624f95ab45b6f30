"""scores.csv written row by row, scores.json at the end."""

from __future__ import annotations

import csv
import json
import math
import os

import pytest

from tipsomaly.errors import OutputError
from tipsomaly.report.tables import ScoreTable, columns


def _row(path, score=0.5, status="ok", error=None, **extra):
    return {
        "path": path,
        "class_name": "nut",
        "image_score": score,
        "score_cls1": score,
        "score_cls2": score / 2,
        "status": status,
        "error": error,
        "name": path.rsplit(".", 1)[0],
        **extra,
    }


def test_columns_order():
    assert columns() == [
        "path",
        "class_name",
        "image_score",
        "score_cls1",
        "score_cls2",
        "status",
        "error",
        "name",
    ]
    assert columns(True).index("is_anomalous") == 5


def test_csv_rows_are_on_disk_as_soon_as_added(tmp_path):
    with ScoreTable(tmp_path / "out") as table:
        table.add(_row("a.png", 0.25))
        lines = (tmp_path / "out" / "scores.csv").read_text().splitlines()
        assert lines[0].startswith("path,class_name,image_score")
        assert lines[1] == "a.png,nut,0.250000,0.250000,0.125000,ok,,a"
        table.add(_row("b.png", math.nan, "error", "cannot load image 'b.png': empty file"))
        rows = list(csv.DictReader((tmp_path / "out" / "scores.csv").open()))
        assert rows[1]["image_score"] == "" and rows[1]["status"] == "error"
        assert "b.png" in rows[1]["error"]
        assert not (tmp_path / "out" / "scores.json").exists()


def test_json_has_rows_summary_settings_and_nulls(tmp_path):
    with ScoreTable(tmp_path, with_is_anomalous=True) as table:
        table.add(_row("a.png", 1.2, is_anomalous=True))
        table.add(_row("b.png", math.nan, "error", "bad", is_anomalous=None))
        path = table.write_json(complete=False, settings={"model": "tiny"})
    doc = json.loads(path.read_text())
    assert doc["complete"] is False
    assert doc["summary"] == {"images": 2, "ok": 1, "failed": 1}
    assert doc["settings"] == {"model": "tiny"}
    assert doc["results"][0]["is_anomalous"] is True
    assert doc["results"][1]["image_score"] is None and doc["results"][1]["is_anomalous"] is None
    assert list(doc["results"][0]) == doc["columns"]
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert rows[0]["is_anomalous"] == "true" and rows[1]["is_anomalous"] == ""
    assert not list(tmp_path.glob("*.tmp"))


def test_unknown_columns_are_an_error(tmp_path):
    with ScoreTable(tmp_path) as table, pytest.raises(ValueError, match="unknown columns"):
        table.add(_row("a.png", bogus=1))


def test_lf_line_endings_and_undecodable_names_escaped(tmp_path):
    odd = os.fsdecode(b"caf\xff.png")  # a Linux file name that is not UTF-8
    with ScoreTable(tmp_path) as table:
        table.add(_row(odd, 0.5))
        table.add(_row("b.png", math.nan, "error", f"cannot load image '{odd}': empty file"))
        table.write_json(complete=True)
    raw = (tmp_path / "scores.csv").read_bytes()
    assert b"\r" not in raw and raw.count(b"\n") == 3
    text = raw.decode("utf-8")
    assert "caf\\xff.png" in text and "'caf\\xff.png': empty file" in text
    doc = json.loads((tmp_path / "scores.json").read_bytes().decode("utf-8"))
    assert doc["results"][0]["path"] == "caf\\xff.png"


def test_disk_errors_name_the_file_and_keep_the_rows(tmp_path):
    with ScoreTable(tmp_path) as table:
        table.add(_row("a.png"))
        (tmp_path / "scores.json").mkdir()  # the JSON cannot be written
        with pytest.raises(OutputError, match=r"cannot write .*scores\.json: Is a directory"):
            table.write_json(complete=True)
    assert len(list(csv.DictReader((tmp_path / "scores.csv").open()))) == 1
    blocked = tmp_path / "file"
    blocked.write_text("x")
    with pytest.raises(OutputError, match="cannot write"):
        ScoreTable(blocked / "out")
