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

``precision="int8"`` quantizes that ONNX graph for the format's runtime (:mod:`.quantize`),
measures it against the fp32 module on the calibration images, and, with a profile,
recalibrates the profile's thresholds with the int8 graph's own features
(:func:`~tipsomaly.method.fitting.recalibrate`): the graph then outputs the vision features
too and leaves the decisions to ``predict``.
"""

from __future__ import annotations

import copy
import logging
import os
import platform
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from .. import __version__
from ..errors import available, first_line, require
from ..fingerprint import digest, file_digest
from ..method.detector import Detector
from ..method.profile import profile_digest
from .graph import FEATURE_NAMES, INPUT_NAME, ExportModule
from .inferencers.base import DEFAULT_RUNTIME, open_runner
from .metadata import EXPORT_JSON, FORMATS, ExportError, preprocessing_record, write_metadata
from .quantize import quantize, quiet, spearman

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
    precision: str = "fp32",
    calibration: Sequence[str | os.PathLike] | None = None,
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
        precision: ``"fp32"`` or ``"int8"`` (post-training static quantization of the vision
            tower's blocks for the format's runtime, :mod:`.quantize`; the parity is then
            measured on the calibration images, and a profile's calibrated thresholds are
            recalibrated with the int8 graph itself, :func:`~tipsomaly.method.fitting.
            recalibrate`, and recorded with the engine and precision they hold for).
        calibration: int8: the image files to calibrate the quantization on (normal images
            of the class; a profile's references are what ``tipsomaly export`` gives).

    Raises:
        ExportError: an unknown format or precision, a detector not in fp32, int8 without
            calibration images, a profile whose references cannot be read to recalibrate.
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
    if precision not in ("fp32", "int8"):
        raise ExportError(f"an export is fp32 or int8, not {precision!r}")
    for module in ("onnx", "onnxscript", *(("openvino",) if fmt == "openvino" else ())):
        require(module, fmt, f"exporting to {fmt}")  # the extra is named as the format
    int8 = precision == "int8"
    if int8 and not calibration:
        raise ExportError("an int8 export needs calibration images (normal images of the class)")
    profile = detector.profiles.get(class_name)
    # int8 with a profile: its fp32 thresholds do not hold for int8 scores; the graph gives
    # the features to recalibrate them on, and decides nothing itself
    recalibrating = int8 and profile is not None and detector.thresholds_for(class_name) is not None
    module = ExportModule.from_detector(
        detector, class_name, calibrated=not int8, features=recalibrating
    ).eval()
    images = _calibration_images(calibration, module.image_size) if int8 else None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / EXPORT_JSON).unlink(missing_ok=True)  # the folder holds no complete export now
    work = Path(tempfile.mkdtemp(dir=out, prefix=".export-"))
    quantization = recalibrated = None
    try:
        onnx_path = work / FORMATS["onnx"]
        _to_onnx(module, onnx_path, opset)
        if int8:
            assert images is not None
            target = work / (FORMATS[fmt] if fmt == "openvino" else "model.int8.onnx")
            quantization = quantize(DEFAULT_RUNTIME[fmt], onnx_path, target, images, INPUT_NAME)
            for f in work.glob("model.onnx*"):
                f.unlink()
            if fmt == "onnx":
                os.replace(target, onnx_path)
        elif fmt == "openvino":
            ov = require("openvino", "openvino", "exporting to openvino")
            ov.save_model(
                ov.convert_model(str(onnx_path)),
                str(work / FORMATS["openvino"]),
                compress_to_fp16=False,  # the default halves the weights: fp32 stays fp32
            )
            for f in work.glob("model.onnx*"):
                f.unlink()
        graph = work / FORMATS[fmt]
        if int8:
            assert images is not None
            parity = _int8_parity(module, graph, DEFAULT_RUNTIME[fmt], images)
            if recalibrating:
                recalibrated = _recalibrate(detector, class_name, graph, DEFAULT_RUNTIME[fmt])
        else:
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
    if int8:
        _int8_record(record, quantization, calibration, parity, recalibrated)
    write_metadata(out, record)
    return ExportResult(folder=out, graph=out / FORMATS[fmt], record=record, parity=parity)


def _to_onnx(module: ExportModule, path: Path, opset: int) -> None:
    """``module`` → ``path`` (ONNX, fp32, dynamic batch) with torch's dynamo exporter."""
    size = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    logger.info(
        "tracing the graph (%d px, %s) to ONNX opset %d", module.image_size, module.mode, opset
    )
    batch = torch.export.Dim("batch", min=1, max=4096)
    exporter = ("torch.onnx", "torch.export", "torch.__trace", "onnxscript", "onnx_ir")
    with quiet(exporter), torch.no_grad():
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


def _calibration_images(files: Sequence[str | os.PathLike] | None, size: int) -> np.ndarray:
    """The calibration images as the graph's input: (n, 3, S, S) float32 (whole images
    resized as ``predict`` feeds an untiled graph).

    Raises:
        ExportError: an image that cannot be read (named).
    """
    from ..data.images import ImageLoadError, load_tensor

    tensors = []
    for f in files or ():
        try:
            tensors.append(load_tensor(f, size)[0])
        except ImageLoadError as exc:
            raise ExportError(f"calibration image {f}: {exc}") from None
    return torch.stack(tensors).numpy()


def _int8_parity(
    module: ExportModule, graph: Path, runtime: str, images: np.ndarray
) -> dict[str, Any]:
    """The int8 graph against the fp32 module on the calibration images: max |difference|
    per output, the largest map error and the image scores' Spearman rank correlation."""
    runner = open_runner(graph, runtime)
    got: dict[str, list[np.ndarray]] = {}
    want: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(images), PARITY_BATCH):
        x = images[start : start + PARITY_BATCH]
        with torch.no_grad():
            expected = module(torch.from_numpy(x))
        out = runner(x)
        for name, e in zip(module.output_names, expected, strict=True):
            want.setdefault(name, []).append(e.numpy())
            got.setdefault(name, []).append(out[name])
    a = {n: np.concatenate(v).astype(np.float64) for n, v in got.items()}
    b = {n: np.concatenate(v).astype(np.float64) for n, v in want.items()}
    scores = ("image_score", "score_cls1", "score_cls2", "anomaly_map")
    diffs = {n: float(np.abs(a[n] - b[n]).max()) for n in (*scores, "global_cls1", "global_cls2")}
    rho = spearman(a["image_score"], b["image_score"])
    logger.info(
        "int8 against fp32 on %d calibration image(s): max map error %.3g, image-score Spearman %s",
        len(images),
        diffs["anomaly_map"],
        "n/a" if rho is None else f"{rho:.4f}",
    )
    return {"max_abs_diff": diffs, "map_max_error": diffs["anomaly_map"], "spearman": rho}


#: images per run of the fp32 module and the int8 graph while measuring parity
PARITY_BATCH = 4


class _EngineModel:
    """A TIPS model whose ``encode_image`` is the exported graph's (its feature outputs):
    what :func:`~tipsomaly.method.fitting.recalibrate` encodes the references with."""

    def __init__(self, model: Any, runner: Any) -> None:
        self._model = model
        self._runner = runner

    def encode_image(self, images: torch.Tensor) -> Any:
        from ..tips.vision import VisionFeatures

        out = self._runner(np.ascontiguousarray(images.float().cpu().numpy()))
        cls1, cls2, patches = (torch.from_numpy(np.asarray(out[n])) for n in FEATURE_NAMES)
        return VisionFeatures(cls1[:, None], cls2[:, None], patches)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)


def _recalibrate(detector: Detector, class_name: str, graph: Path, runtime: str) -> dict[str, Any]:
    """The profile's thresholds recalibrated with the graph's own features (its references
    read again, :func:`~tipsomaly.method.fitting.recalibrate`)."""
    from ..method.fitting import recalibrate

    profile = detector.profiles[class_name]
    engine = copy.copy(detector)  # the same settings, prompts and profile; the graph's network
    engine.model = _EngineModel(detector.model, open_runner(graph, runtime))  # type: ignore[assignment]
    scores, thresholds = recalibrate(engine, profile, reference_files(profile))
    return {"scores": scores, "thresholds": thresholds, "references": len(scores["zero-shot"])}


def reference_files(profile: Any) -> list[str]:
    """The image files of a profile's references, in the order its bank records them: the
    copies the profile folder keeps (``references/``), else the files it was fitted from.

    Raises:
        ExportError: the profile does not keep them (fitted from arrays) or one is gone.
    """
    from ..method.profile import ProfileError
    from ..method.profile_versions import reference_images

    sources = list((profile.info.get("references") or {}).get("sources") or [])
    advice = (
        "int8 recalibrates its thresholds on them; give --calibration-images DIR and keep the "
        "references, or fit the profile again from files"
    )
    if not sources:
        raise ExportError(
            f"{profile.name} does not keep its reference images (none recorded): {advice}"
        )
    root = Path(profile.path) if profile.path is not None else None
    if root is None:  # a profile in memory: its files where they were
        missing = [s for s in sources if not os.path.isfile(s)]
        if missing:
            raise ExportError(
                f"{profile.name} does not keep its reference images ({len(missing)} of "
                f"{len(sources)} are gone, e.g. {missing[0]}): {advice}"
            )
        return sources
    try:
        return [str(p) for p in reference_images(root, profile.info)[0]]
    except ProfileError as exc:
        raise ExportError(f"{first_line(exc)}; {advice}") from None


def _int8_record(
    record: dict[str, Any],
    quantization: dict[str, Any] | None,
    calibration: Sequence[str | os.PathLike] | None,
    parity: dict[str, Any],
    recalibrated: dict[str, Any] | None,
) -> None:
    """``record`` (of :func:`_record`) made the record of an int8 export."""
    graph = record["graph"]
    graph["precision"] = "int8"
    graph["exporter"] += ", then int8 post-training static quantization"
    runtime = {"onnx": "onnxruntime", "openvino": "openvino"}[graph["format"]]
    record["identity"].update(engine=runtime, precision="int8")
    files = [str(os.path.abspath(f)) for f in calibration or ()]
    record["quantization"] = {
        **(quantization or {}),
        "calibration": {
            "images": len(files),
            "digest": digest(sorted(file_digest(f) for f in files)),  # by content
            "files": files,
        },
    }
    record["parity"] = {
        "max_abs_diff": parity["max_abs_diff"],
        "map_max_error": parity["map_max_error"],
        "image_score_spearman": parity["spearman"],
        "runtime": runtime,
        "images": len(files),
        "against": "the PyTorch module, fp32, on the calibration images",
    }
    thresholds = record["thresholds"]
    if recalibrated is not None:
        mode = record["mode"]
        calibrated = recalibrated["thresholds"]
        for kind in ("image", "pixel"):
            value = thresholds.get(kind)
            if value is None or "n" in value:  # the profile's: replaced by the int8 engine's
                c = calibrated.get(mode, kind)
                thresholds[kind] = None if c is None else c.to_dict()
        thresholds["calibration"] = {
            "method": "leave-one-out on the profile's references, scored by this int8 graph "
            "(its features) against the profile's bank; conformal quantile at the profile's "
            "false-alarm rates",
            "references": recalibrated["references"],
            "scores": recalibrated["scores"][mode] if mode in recalibrated["scores"] else [],
        }
    thresholds["calibrated_with"] = {"engine": runtime, "precision": "int8"}
    thresholds["decision"] = (
        "predict compares image_score and anomaly_map with these thresholds (an int8 graph "
        "decides nothing itself unless thresholds were given at export)"
    )


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
        features_cls1=(["batch", "dim"], "float32"),
        features_cls2=(["batch", "dim"], "float32"),
        features_patches=(["batch", (s // detector.patch_size) ** 2, "dim"], "float32"),
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
            "version": getattr(profile, "version", None),
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
            # the scores the calibrated thresholds were calibrated on: the profile's fit
            "calibrated_with": None
            if calibrated is None
            else {"engine": "torch", "precision": _fitted_precision(profile)},
            # and the scores themselves: a served export's drift check compares with them
            "calibration": None
            if calibrated is None or profile is None
            else {
                "method": "the profile's fit: leave-one-out on its references",
                "references": len(profile.calibration_scores.get(mode, [])),
                "scores": profile.calibration_scores.get(mode, []),
            },
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


def _fitted_precision(profile: Any) -> str:
    """The precision a profile was fitted in (``fit`` records its dtype), fp32 if unsaid."""
    dtype = str(((profile.info if profile else {}).get("settings") or {}).get("dtype") or "fp32")
    return {"torch.float32": "fp32", "torch.bfloat16": "bf16"}.get(dtype, dtype)


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
