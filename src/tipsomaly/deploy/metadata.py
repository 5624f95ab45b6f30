"""``export.json``: what an exported graph is, how to feed it, and what produced it.

An export folder holds the graph (``model.onnx``, or ``model.xml`` + ``model.bin`` for
OpenVINO) and ``export.json`` beside it, written last (so a folder with an ``export.json``
holds a complete export). The record (schema ``tipsomaly-export``, version
:data:`SCHEMA_VERSION`)::

    schema, schema_version, created
    graph          file, format (onnx | openvino), sha256 of the graph file(s), opset,
                   exporter, precision (fp32 | int8), input (name, shape [batch, 3, S, S],
                   dtype), outputs (name, shape, dtype; pred_label / pred_mask with
                   thresholds in the graph; features_* in an int8 graph with a profile)
    class_name     the one class the text embeddings were computed for
    identity       what produces the scores (tipsomaly.identity.Identity: model name and
                   fingerprint, image size, prompts, pixel prompts, sigma, cls, tiling, ROI)
    settings       the settings predict applies with it (image size, sigma, cls, prompts,
                   tile, tile_overlap, roi: a mask file in the folder)
    mode
    profile        null, or the few-shot profile baked in (path, digest, identity, references,
                   bank size)
    thresholds     {"image", "pixel"} of mode: a calibration record (a profile's; int8: the
                   profile's recalibrated with the int8 graph, with its leave-one-out
                   scores in "calibration"), {"threshold"} (given at export: applied as
                   given) or null; "calibrated_with" {engine, precision}: the scores the
                   calibrated ones hold for (an int8 engine refuses others, and the reverse)
    quantization   int8 only: the tool and its settings, what stays fp32, the calibration
                   images (count, content digest, files)
    preprocessing  how images become the input (resize rule, scaling, no normalisation)
    parity         max |exported − PyTorch| per output, measured at export time (int8: on
                   the calibration images, with map_max_error and image_score_spearman)
    versions       tipsomaly, torch, onnx, onnxruntime / openvino, python

Version 1 (before tiles and ROIs met exports) had ``model``, ``prompts``, ``pixel_prompts``,
``image_size``, ``sigma`` and ``cls`` at the top and a graph without the evidence outputs;
:func:`upgrade_to_latest` rewrites it as version 2 (anomalib's ``deploy/metadata`` idea), and
such a graph scores whole images without an ROI only. A newer version is refused with a
message. Nothing here imports torch.
"""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any

from ..errors import TipsomalyError, first_line
from ..files import atomic_path, inside_folder

__all__ = [
    "EXPORT_JSON",
    "FORMATS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "ExportError",
    "is_export_dir",
    "preprocessing_record",
    "read_metadata",
    "upgrade_to_latest",
    "write_metadata",
]

EXPORT_JSON = "export.json"
SCHEMA = "tipsomaly-export"
SCHEMA_VERSION = 2
#: the formats ``tipsomaly export`` writes, and the graph file each one is read from
FORMATS = {"onnx": "model.onnx", "openvino": "model.xml"}

#: the keys a record of the current version must have
_REQUIRED = (
    "schema",
    "schema_version",
    "graph",
    "class_name",
    "identity",
    "settings",
    "mode",
    "thresholds",
    "preprocessing",
    "versions",
)


class ExportError(TipsomalyError, ValueError):
    """An export cannot be written, read or used (the message names the folder or file)."""


def preprocessing_record(image_size: int) -> dict[str, Any]:
    """How an image becomes one (3, S, S) row of the graph's input: what
    :func:`tipsomaly.data.images.load_image` and :func:`~tipsomaly.data.images.preprocess`
    do, written out for a runtime without tipsomaly."""
    return {
        "function": "tipsomaly.data.images.load_image + tipsomaly.data.images.preprocess",
        "decode": "EXIF orientation applied; converted to 8-bit RGB (grey and palette "
        "expanded, alpha dropped, 16-bit scaled to 8 bits)",
        "resize": f"PIL Image.resize(({image_size}, {image_size}), Image.Resampling.BILINEAR) "
        "of the whole image: aspect ratio not kept, no crop",
        "scale": "uint8 / 255 -> float32 in [0, 1]",
        "normalize": None,
        "layout": "NCHW, RGB",
        "dtype": "float32",
        "input_shape": ["batch", 3, image_size, image_size],
        "maps": "anomaly_map is at the input size S; predict resizes it to the image's "
        "original size with bilinear interpolation (align_corners=False)",
    }


def is_export_dir(path: str | os.PathLike | None) -> bool:
    """Whether ``path`` is a folder holding an ``export.json`` (what ``tipsomaly export``
    writes), as opposed to a model folder or a preset name."""
    if path is None:
        return False
    try:
        return (Path(path) / EXPORT_JSON).is_file()
    except (OSError, ValueError):
        return False


def write_metadata(folder: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``export.json`` into ``folder`` under a temporary name, then rename it (the
    last file of an export). ``created`` and the schema fields are filled in."""
    out = Path(folder)
    record = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **record,
    }
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        raise ValueError(f"export record lacks {', '.join(missing)}")
    with atomic_path(out / EXPORT_JSON) as tmp:
        tmp.write_text(json.dumps(record, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    return out / EXPORT_JSON


def upgrade_to_latest(record: dict[str, Any], where: object = EXPORT_JSON) -> dict[str, Any]:
    """A record of any known schema version as the current version.

    Each version adds a step here that rewrites the one before, so old exports keep loading:
    1 → 2 gathers the scoring settings into ``identity`` and ``settings``.

    Raises:
        ExportError: not an export record, or written by a newer tipsomaly.
    """
    if not isinstance(record, dict) or record.get("schema") != SCHEMA:
        raise ExportError(f"{where}: not a tipsomaly export record (schema {SCHEMA!r})")
    version = record.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ExportError(f"{where}: bad schema_version {version!r}")
    if version > SCHEMA_VERSION:
        raise ExportError(
            f"{where}: export schema version {version} is newer than this tipsomaly's "
            f"({SCHEMA_VERSION}); upgrade tipsomaly or export again with this one"
        )
    if version == 1:
        record = dict(record)
        identity = {k: record.pop(k, None) for k in _V1_IDENTITY}
        prompts = identity.get("prompts") or {}
        pixel = identity.get("pixel_prompts")
        record["identity"] = {**identity, "engine": "torch", "precision": "fp32"}
        record["settings"] = {
            "image_size": identity.get("image_size"),
            "sigma": identity.get("sigma"),
            "cls": identity.get("cls"),
            "prompt_type": prompts.get("name"),
            "pixel_prompts": "none" if pixel is None else pixel.get("source", "given"),
        }
        record["schema_version"] = 2
    return record


#: the version-1 keys that make up a version-2 ``identity``
_V1_IDENTITY = ("model", "image_size", "prompts", "pixel_prompts", "sigma", "cls")


def read_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """The checked, upgraded ``export.json`` of an export folder.

    Raises:
        ExportError: no export there, an unreadable or malformed record, a graph file
            missing (each named).
    """
    folder = Path(folder)
    path = folder / EXPORT_JSON
    if not path.is_file():
        what = "does not exist" if not folder.exists() else f"holds no {EXPORT_JSON}"
        raise ExportError(f"{folder} {what}: make one with `tipsomaly export`")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ExportError(f"{path}: unreadable ({first_line(exc)})") from None
    record = upgrade_to_latest(record, path)
    missing = [k for k in _REQUIRED if k not in record]
    if missing:
        raise ExportError(f"{path}: missing {', '.join(missing)}")
    graph = record["graph"]
    if not isinstance(graph, dict) or graph.get("format") not in FORMATS:
        raise ExportError(f"{path}: graph.format must be one of {', '.join(FORMATS)}")
    names = [graph.get("file"), *(graph.get("sha256") or {})]
    for name in names:  # a record must not send the runtime outside its folder
        if not isinstance(name, str) or not inside_folder(name):
            raise ExportError(f"{path}: the graph file {name!r} must be a name in {folder}")
    if not (folder / graph["file"]).is_file():
        raise ExportError(f"{path}: the graph file {graph.get('file')!r} is not in {folder}")
    if not isinstance(record["identity"], dict) or not isinstance(record["settings"], dict):
        raise ExportError(f"{path}: identity and settings must be objects")
    size = record["settings"].get("image_size")
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ExportError(f"{path}: bad image_size {size!r}")
    roi = record["settings"].get("roi")  # a file the export holds: a name inside its folder
    if roi is not None and not inside_folder(roi):
        raise ExportError(f"{path}: settings.roi {roi!r} must name a file in {folder}")
    if not isinstance(record["class_name"], str) or not record["class_name"]:
        raise ExportError(f"{path}: bad class_name {record['class_name']!r}")
    return record
