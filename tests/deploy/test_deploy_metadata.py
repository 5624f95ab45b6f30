"""``read_metadata``: an export.json names files inside its own folder, nothing else.

The records are written by hand (no model is exported): a graph file, the SHA-256 names and
``settings.roi`` that point outside the folder (absolute, ``..``, a Windows drive) are refused
with an :class:`ExportError` naming the record, even where the file they name exists.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tipsomaly.deploy.metadata import EXPORT_JSON, SCHEMA, SCHEMA_VERSION, read_metadata
from tipsomaly.errors import TipsomalyError


def _record(**changes) -> dict:
    """A complete version-2 record of an ONNX export of ``model.onnx``."""
    record = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": "2025-01-01T00:00:00+00:00",
        "graph": {"file": "model.onnx", "format": "onnx", "sha256": {"model.onnx": "0" * 64}},
        "class_name": "screw",
        "identity": {"model": {"name": "tiny"}},
        "settings": {"image_size": 70, "sigma": 4, "cls": "cls1", "roi": None},
        "mode": "zero-shot",
        "thresholds": {"image": None, "pixel": None, "source": None},
        "preprocessing": {},
        "versions": {},
    }
    for key, value in changes.items():
        record[key] = value
    return record


@pytest.fixture
def folders(tmp_path) -> tuple[Path, Path]:
    """(an export folder with its graph and an ROI mask, a folder beside it holding the same
    files): the files a bad record names outside the export all exist."""
    export, outside = tmp_path / "export", tmp_path / "outside"
    for folder in (export, outside, export / "masks"):
        folder.mkdir()
    for folder in (export, outside):
        (folder / "model.onnx").write_bytes(b"not a real graph")
        (folder / "model.bin").write_bytes(b"weights")
        (folder / "roi.png").write_bytes(b"mask")
    (export / "masks" / "roi.png").write_bytes(b"mask")
    return export, outside


def _write(folder: Path, record: dict) -> Path:
    path = folder / EXPORT_JSON
    path.write_text(json.dumps(record), encoding="utf-8")
    return path


def _outside_names(outside: Path, name: str) -> list[str]:
    """Names of ``outside/name`` as a record could give them: absolute, ``..``, Windows forms."""
    return [
        str(outside / name),  # absolute
        f"../{outside.name}/{name}",  # relative, climbing out
        f"masks/../../{outside.name}/{name}",  # climbing out from inside
        f"..\\{outside.name}\\{name}",  # Windows separators
        f"C:\\{name}",  # a Windows drive
        f"C:{name}",  # drive-relative: the drive's current folder, not the export's
    ]


def test_a_record_of_names_inside_the_folder_is_read(folders):
    export, _ = folders
    graph = {"file": "model.onnx", "format": "onnx", "sha256": {"model.onnx": "0" * 64}}
    settings = {"image_size": 70, "roi": "masks/roi.png"}
    _write(export, _record(graph=graph, settings=settings))
    record = read_metadata(export)
    assert record["graph"]["file"] == "model.onnx"
    assert record["settings"]["roi"] == "masks/roi.png"


@pytest.mark.parametrize("which", range(6))
def test_a_graph_file_outside_the_folder_is_refused(folders, which):
    export, outside = folders
    name = _outside_names(outside, "model.onnx")[which]
    path = _write(export, _record(graph={"file": name, "format": "onnx", "sha256": {}}))
    with pytest.raises(TipsomalyError) as info:
        read_metadata(export)
    message = str(info.value)
    assert isinstance(info.value, ValueError)  # ExportError keeps its builtin base
    assert message == f"{path}: the graph file {name!r} must be a name in {export}"


@pytest.mark.parametrize("which", range(6))
def test_a_checksum_name_outside_the_folder_is_refused(folders, which):
    export, outside = folders
    name = _outside_names(outside, "model.bin")[which]
    graph = {
        "file": "model.onnx",
        "format": "onnx",
        "sha256": {"model.onnx": "0" * 64, name: "1" * 64},
    }
    path = _write(export, _record(graph=graph))
    with pytest.raises(TipsomalyError) as info:
        read_metadata(export)
    assert str(info.value) == f"{path}: the graph file {name!r} must be a name in {export}"


@pytest.mark.parametrize("which", range(6))
def test_an_roi_outside_the_folder_is_refused(folders, which):
    export, outside = folders
    name = _outside_names(outside, "roi.png")[which]
    path = _write(export, _record(settings={"image_size": 70, "roi": name}))
    with pytest.raises(TipsomalyError) as info:
        read_metadata(export)
    assert str(info.value) == f"{path}: settings.roi {name!r} must name a file in {export}"


@pytest.mark.parametrize("roi", [5, ["roi.png"], {"file": "roi.png"}, ""])
def test_an_roi_that_is_not_a_name_is_refused(folders, roi):
    export, _ = folders
    path = _write(export, _record(settings={"image_size": 70, "roi": roi}))
    with pytest.raises(TipsomalyError) as info:
        read_metadata(export)
    assert str(info.value) == f"{path}: settings.roi {roi!r} must name a file in {export}"
