"""Write an export folder: the method as an ONNX or OpenVINO graph, and ``export.json``.

:func:`export` builds the :class:`~tipsomaly.deploy.graph.ExportModule` of a class from a
:class:`~tipsomaly.method.detector.Detector` (its model, prompts, image size, sigma, CLS
token and, when it holds a profile of the class, the profile's bank and thresholds), traces
it with ``torch.onnx.export(..., dynamo=True)`` (``torch.export`` then the ONNX translator;
opset :data:`OPSET`, the batch a free dimension), converts the ONNX file with
``openvino.convert_model`` for the ``openvino`` format (anomalib's ``to_openvino`` route),
and checks the graph on a runtime against the PyTorch module on random images (the largest
differences go into ``export.json`` as ``parity``). Files are written in a temporary folder
inside ``out_dir`` and moved into place; ``export.json`` comes last.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .. import __version__
from ..errors import available, require
from ..fingerprint import file_digest
from ..method.detector import Detector
from ..method.profile import profile_digest
from .graph import INPUT_NAME, ExportModule
from .inferencers.base import DEFAULT_RUNTIME, open_runner
from .metadata import EXPORT_JSON, FORMATS, ExportError, preprocessing_record, write_metadata

logger = logging.getLogger(__name__)

__all__ = ["OPSET", "PARITY_TOLERANCE", "ExportFormat", "ExportResult", "export"]

ExportFormat = Literal["onnx", "openvino"]
#: the ONNX opset written: the lowest torch's dynamo exporter supports (ONNX Runtime >= 1.14
#: and OpenVINO read it)
OPSET = 18
#: above this max |exported − PyTorch| difference (scores or maps), export warns
PARITY_TOLERANCE = 1e-4
#: ONNX protobufs stop at 2 GiB: weights above this go to an external ``model.onnx.data``
_INLINE_LIMIT = 1_800_000_000


@dataclass
class ExportResult:
    """What :func:`export` wrote: the folder, the graph file, the ``export.json`` record and
    the parity measured (max |exported − PyTorch| per output, or None when no runtime was
    installed to measure it)."""

    folder: Path
    graph: Path
    record: dict[str, Any]
    parity: dict[str, float] | None


def export(
    detector: Detector,
    class_name: str,
    out_dir: str | os.PathLike,
    fmt: ExportFormat = "onnx",
    *,
    opset: int = OPSET,
    check: bool = True,
) -> ExportResult:
    """Export ``detector``'s method for ``class_name`` into ``out_dir`` (created).

    Args:
        detector: an fp32 :class:`Detector`; with a profile of ``class_name`` the export
            holds its bank (in the detector's mode) and its calibrated thresholds (thresholds
            given in its config replace them). Its tiling and ROI are recorded and applied by
            ``predict --model`` (the graph scores the tiles; the ROI mask is copied in).
        class_name: the class whose text embeddings are baked in.
        out_dir: the export folder; an earlier export there is replaced.
        fmt: ``"onnx"`` (``model.onnx``) or ``"openvino"`` (``model.xml`` + ``model.bin``).
        opset: the ONNX opset (18 or newer).
        check: run the graph on its runtime against PyTorch (2 random images) and record the
            differences; skipped with a warning when the runtime is not installed.

    Raises:
        ExportError: an unknown format, a detector not in fp32.
        MissingExtraError: onnx / onnxscript (or openvino) is not installed.
        OutputError-like ``OSError``: ``out_dir`` cannot be written.

    Example:
        >>> detector = Detector("b14", image_size=518)  # doctest: +SKIP
        >>> export(detector, "screw", "export/screw", "onnx").graph  # doctest: +SKIP
        PosixPath('export/screw/model.onnx')
    """
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if detector.model.compute_dtype != torch.float32:
        raise ExportError(
            f"exports are fp32; this detector computes in {detector.model.compute_dtype}"
        )
    for module in ("onnx", "onnxscript", *(("openvino",) if fmt == "openvino" else ())):
        require(module, fmt, f"exporting to {fmt}")  # the extra is named as the format
    module = ExportModule.from_detector(detector, class_name).eval()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_JSON).unlink(missing_ok=True)  # the folder holds no complete export now
    work = Path(tempfile.mkdtemp(dir=out, prefix=".export-"))
    try:
        onnx_path = work / FORMATS["onnx"]
        _to_onnx(module, onnx_path, opset)
        if fmt == "openvino":
            ov = require("openvino", "openvino", "exporting to openvino")
            ov.save_model(
                ov.convert_model(str(onnx_path)),
                str(work / FORMATS["openvino"]),
                compress_to_fp16=False,  # the default halves the weights: fp32 stays fp32
            )
            for f in work.glob("model.onnx*"):
                f.unlink()
        graph = work / FORMATS[fmt]
        parity = _parity(module, graph, DEFAULT_RUNTIME[fmt]) if check else None
        files = sorted(p.name for p in work.iterdir())
        sha = {name: file_digest(work / name) for name in files}
        if detector.config.roi is not None:  # the export holds its own copy of the mask
            shutil.copyfile(detector.config.roi, work / ROI_FILE)
        for name in sorted(p.name for p in work.iterdir()):
            os.replace(work / name, out / name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record = _record(detector, class_name, module, fmt, opset, sha, parity)
    write_metadata(out, record)
    return ExportResult(folder=out, graph=out / FORMATS[fmt], record=record, parity=parity)


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch's ONNX exporter prints its steps and warns about optional torchvision ops:
    only our own log line says what happens."""
    loud = [
        logging.getLogger(n)
        for n in ("torch.onnx", "torch.export", "torch.__trace", "onnxscript", "onnx_ir")
    ]
    levels = [lg.level for lg in loud]
    try:
        for lg in loud:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loud, levels, strict=True):
            lg.setLevel(level)


def _to_onnx(module: ExportModule, path: Path, opset: int) -> None:
    """``module`` → ``path`` (ONNX, fp32, dynamic batch) with torch's dynamo exporter."""
    size = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    logger.info(
        "tracing the graph (%d px, %s) to ONNX opset %d", module.image_size, module.mode, opset
    )
    batch = torch.export.Dim("batch", min=1, max=4096)
    with _quiet_exporter(), torch.no_grad():
        torch.onnx.export(
            module,
            (module.example_input(2),),
            str(path),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=list(module.output_names),
            dynamic_shapes={INPUT_NAME: {0: batch}},
            opset_version=opset,
            external_data=size > _INLINE_LIMIT,
        )


def _parity(module: ExportModule, graph: Path, runtime: str) -> dict[str, float] | None:
    """Max |graph − module| per output on 2 random images (other than the traced ones)."""
    package = "onnxruntime" if runtime == "onnxruntime" else "openvino"
    if not available(package):
        logger.warning("%s is not installed: the exported graph was not checked", package)
        return None
    gen = torch.Generator().manual_seed(1)
    s = module.image_size
    images = torch.rand(2, 3, s, s, generator=gen)
    with torch.no_grad():
        expected = module(images)
    got = open_runner(graph, runtime)(images.numpy())
    diffs = {
        name: float(np.abs(got[name].astype(np.float64) - e.numpy().astype(np.float64)).max())
        for name, e in zip(module.output_names, expected, strict=True)
    }
    worst = max(diffs[n] for n in ("image_score", "score_cls1", "score_cls2", "anomaly_map"))
    if worst > PARITY_TOLERANCE:
        logger.warning(
            "the exported graph differs from PyTorch by up to %.3g (tolerance %.0e): %s",
            worst,
            PARITY_TOLERANCE,
            diffs,
        )
    return diffs


#: the name of the ROI mask an export holds (settings.roi)
ROI_FILE = "roi.png"


def _record(
    detector: Detector,
    class_name: str,
    module: ExportModule,
    fmt: str,
    opset: int,
    sha: dict[str, str],
    parity: dict[str, float] | None,
) -> dict[str, Any]:
    """The ``export.json`` record (see :mod:`tipsomaly.deploy.metadata`)."""
    config = detector.config
    s = module.image_size
    profile = detector.profiles.get(class_name)
    mode = module.mode
    _, image, pixel, _ = detector.decision(class_name)
    calibrated = detector.thresholds_for(class_name)
    per_image = ("image_score", "score_cls1", "score_cls2", "global_cls1", "global_cls2")
    shapes = dict.fromkeys(per_image, (["batch"], "float32"))
    shapes.update(
        anomaly_map=(["batch", s, s], "float32"),
        patch_evidence=(["batch", (s // detector.patch_size) ** 2], "float32"),
        pred_label=(["batch"], "bool"),
        pred_mask=(["batch", s, s], "bool"),
    )

    def threshold(kind: str, value: float | None) -> dict[str, Any] | None:
        if value is None:
            return None
        calib = None if calibrated is None else calibrated.get(mode, kind)
        if calib is not None and calib.threshold == value:  # the profile's, with its promise
            return calib.to_dict()
        return {"threshold": value}  # given

    settings = config.settings()
    return {
        "graph": {
            "file": FORMATS[fmt],
            "format": fmt,
            "sha256": sha,
            "opset": opset,
            "exporter": f"torch.onnx.export(dynamo=True), torch {torch.__version__}"
            + (", then openvino.convert_model" if fmt == "openvino" else ""),
            "precision": "fp32",
            "input": {"name": INPUT_NAME, "shape": ["batch", 3, s, s], "dtype": "float32"},
            "outputs": [
                {"name": n, "shape": shapes[n][0], "dtype": shapes[n][1]}
                for n in module.output_names
            ],
        },
        "class_name": class_name,
        "identity": detector.identity.to_dict(),
        "settings": {
            **{k: settings[k] for k in ("image_size", "sigma", "cls", "tile", "tile_overlap")},
            "prompt_type": detector.prompts.name,
            "pixel_prompts": settings["pixel_prompts"],
            "roi": None if config.roi is None else ROI_FILE,
        },
        "mode": mode,
        "profile": None
        if profile is None
        else {
            "path": None if profile.path is None else os.path.abspath(profile.path),
            "digest": profile_digest(profile),
            "identity": profile.identity,
            "references": profile.info.get("references"),
            "bank": {
                "patches": len(profile.bank.patches),
                "cls": len(profile.bank.cls1),
                "in_graph": mode != "zero-shot",
            },
        },
        "thresholds": {
            "image": threshold("image", image),
            "pixel": threshold("pixel", pixel),
            "decision": "pred_label = image_score >= image threshold; pred_mask = "
            "anomaly_map >= pixel threshold (in the graph, fp32; predict compares the "
            "scores with these values)",
        },
        "preprocessing": preprocessing_record(s),
        "parity": None
        if parity is None
        else {
            "max_abs_diff": parity,
            "runtime": DEFAULT_RUNTIME[fmt],
            "images": 2,
            "against": "the PyTorch module, fp32",
        },
        "versions": _versions(fmt),
    }


def _versions(fmt: str) -> dict[str, str | None]:
    def version(name: str) -> str | None:
        if not available(name):
            return None
        return str(getattr(__import__(name), "__version__", "?"))

    found = {
        "tipsomaly": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "onnx": version("onnx"),
        "onnxscript": version("onnxscript"),
        "onnxruntime": version("onnxruntime"),
    }
    if fmt == "openvino":
        found["openvino"] = version("openvino")
    return found
