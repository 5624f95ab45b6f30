"""The exported engine of the pipeline: :class:`ExportedDetector`, a graph on ONNX Runtime or
OpenVINO.

An :class:`ExportedDetector` reads an export folder (``export.json`` and the graph) and is a
:class:`~tipsomaly.method.pipeline.Predictor` like :class:`~tipsomaly.method.detector.Detector`:
the same decoding, ROI, tiling, decisions and defect records, the same
:class:`~tipsomaly.method.prediction.Prediction` s; only :meth:`ExportedDetector.score` differs,
running the graph (which outputs the scores, the map and the evidence they are made of). Its
settings are the export's (image size, sigma, CLS token, prompts, mode, baked profile and its
thresholds, and the tiling and ROI recorded at export); options given contradicting them are
refused, and a baked profile's tiling and ROI are kept (checked) as a profile's are.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from ...errors import InvalidOptionError, MissingExtraError, SetupMismatchError, available
from ...fingerprint import file_digest
from ...identity import Identity, calibration_diff, diff
from ...method.config import DetectorConfig
from ...method.decision import Thresholds
from ...method.detector import profile_keys, roi_digest
from ...method.head import DetectorOutput
from ...method.pipeline import Predictor
from ...method.prediction import Prediction
from ...method.profile import NotCalibratedError
from ...metrics.drift import DriftReport, check_drift
from ..graph import SCORE_NAMES
from ..metadata import ExportError, read_metadata

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_RUNTIME", "RUNTIMES", "ExportedDetector", "GraphRunner", "open_runner"]

#: each runtime, the graph formats it reads, and the extra that installs it
RUNTIMES = {"onnxruntime": (("onnx",), "onnx"), "openvino": (("onnx", "openvino"), "openvino")}
#: the runtime a format runs on unless told otherwise
DEFAULT_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}
#: the dtype names of fp32 (and ``auto``: an export runs in fp32 whatever the machine)
FP32 = ("auto", "fp32", "float32")
#: the outputs a version-1 graph lacks (it scores whole images without an ROI only)
EVIDENCE = ("global_cls1", "global_cls2", "patch_evidence")


class GraphRunner(Protocol):
    """A compiled graph: (B, 3, S, S) float32 images → ``{output name: array}``."""

    runtime: str
    input_name: str
    output_names: tuple[str, ...]
    version: str

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]: ...


def open_runner(
    path: str | os.PathLike, runtime: str, *, threads: int | None = None, bf16: bool = False
) -> GraphRunner:
    """A :class:`GraphRunner` of the graph file ``path`` on ``runtime`` (``onnxruntime`` or
    ``openvino``), in the graph's precision (``bf16``: OpenVINO computes an fp32 graph's
    matrix products in bf16).

    Raises:
        ExportError: an unknown runtime.
        MissingExtraError: the runtime is not installed.
    """
    if runtime == "onnxruntime":
        from .onnx import OnnxRunner

        return OnnxRunner(path, threads=threads)
    if runtime == "openvino":
        from .openvino import OpenVinoRunner

        return OpenVinoRunner(path, threads=threads, precision="bf16" if bf16 else "f32")
    raise ExportError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")


class ExportedDetector(Predictor):
    """An export folder as a detector for the export's one class (see the module doc).

    Args:
        folder: an export folder (``export.json`` + graph), from ``tipsomaly export``.
        runtime: ``"onnxruntime"`` or ``"openvino"``; default: the format's own.
        threads: the runtime's intra-op threads (None: its default).
        **settings: :class:`~tipsomaly.method.config.DetectorConfig` fields; None or left out:
            the export's. ``tile``, ``tile_overlap``, ``roi`` (without a baked profile),
            ``batch_size``, ``max_pixels``, the thresholds and defect settings may be set;
            what the graph fixed (image size, sigma, CLS token, prompts, mode, profile) must
            equal the export's.

    The runtime compiles the graph on first use (:attr:`runner`); the graph files' SHA-256
    are checked against ``export.json`` then.

    Raises:
        ExportError: no export in ``folder``, a malformed record, a runtime that cannot read
            the format.
        SetupMismatchError: a setting that contradicts the export (named).
        MissingExtraError: the runtime is not installed (names the extra).
    """

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        runtime: str | None = None,
        threads: int | None = None,
        precision: str | None = None,
        **settings: Any,
    ) -> None:
        self.folder = Path(folder)
        self.record = record = read_metadata(self.folder)
        self.format: str = record["graph"]["format"]
        self.runtime = runtime or DEFAULT_RUNTIME[self.format]
        if self.runtime not in RUNTIMES:
            raise ExportError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        formats, extra = RUNTIMES[self.runtime]
        if self.format not in formats:
            raise ExportError(f"{self.runtime} cannot run an {self.format} export ({self.folder})")
        self.precision = _precision(record, self.runtime, precision, self.folder)
        if not available(self.runtime):
            raise MissingExtraError(
                f"running the {self.format} export {self.folder} needs {self.runtime}, which "
                f"is not installed: pip install 'tipsomaly[{extra}]'"
            )
        self.class_name: str = record["class_name"]
        self.baked = record.get("profile")
        self._mode: str = record["mode"]
        super().__init__(self._config(settings))
        self.threads = threads
        self.has_evidence = all(
            n in (o["name"] for o in record["graph"]["outputs"]) for n in EVIDENCE
        )
        if not self.has_evidence and (self.config.tile is not None or self.config.roi is not None):
            raise self._too_old("no tiles, no ROI")
        if self.baked is not None:  # a baked profile's tiling and ROI are part of its numbers
            fitted = self.baked.get("identity") or {}
            keys = [k for k in profile_keys(fitted) if k in ("tiling", "roi")]
            problems = diff(fitted, self.identity.scoring(), keys)
            if problems:
                raise SetupMismatchError(
                    f"the profile in {self.folder} was fitted with another setup: "
                    f"{'; '.join(problems)}. Leave those options out (the export's apply)"
                )
        self._runner: GraphRunner | None = None
        self._lock = threading.Lock()  # one graph run at a time (runtimes reuse buffers)

    def _config(self, given: dict[str, Any]) -> DetectorConfig:
        """The export's settings with the options ``given`` (see the class doc)."""
        record, folder = self.record, self.folder
        recorded = dict(record["settings"])
        if recorded.get("roi"):
            recorded["roi"] = str(folder / recorded["roi"])
        given = {k: v for k, v in given.items() if v is not None}
        fixed = {"prompt_type": recorded.get("prompt_type"), "mode": self._mode}
        for name, value in fixed.items():
            if name in given and given[name] != value:
                raise SetupMismatchError(
                    f"{name} {given[name]}: the export {folder} was made with {name} {value}; "
                    "leave it out or export again with the value you want"
                )
        given.pop("mode", None)
        refused = {
            "prompt_file": "the export holds its text embeddings already",
            "profiles": "the export holds its own profile (if any) in the graph; export again "
            "with `tipsomaly export --profile DIR`",
        }
        for name, why in refused.items():
            if given.get(name):
                raise InvalidOptionError(f"{name}: {why} ({folder})")
        pixel = given.pop("pixel_prompts", "auto")
        made_with = str(recorded.pop("pixel_prompts", "none"))
        if str(pixel).lower() not in ("auto", made_with.lower()):
            raise SetupMismatchError(
                f"pixel_prompts {pixel}: the export {folder} was made with "
                f"{made_with}; leave it out or export again with them"
            )
        if str(given.get("device", "cpu")) not in ("auto", "cpu"):
            raise InvalidOptionError(f"device {given['device']}: an export runs on the CPU")
        if str(given.get("dtype", "fp32")).removeprefix("torch.") not in FP32:
            raise InvalidOptionError(f"dtype {given['dtype']}: an export runs in fp32")
        for name in ("device", "dtype", "prompt_type", "profiles", "prompt_file"):
            given.pop(name, None)
        thresholds = record.get("thresholds") or {}
        for kind, field in (("image", "image_threshold"), ("pixel", "pixel_threshold")):
            value = thresholds.get(kind)
            if isinstance(value, dict) and "n" not in value:  # given at export, not calibrated
                given.setdefault(field, value["threshold"])
        checked = ("image_size", "sigma", "cls") + (
            ("tile", "tile_overlap") if self.baked is not None else ()
        )
        return DetectorConfig.from_record(
            recorded,
            source=str(folder),
            what="exported",
            given=given,
            checked=checked,
            model=str(folder),
            prompt_type=recorded.get("prompt_type") or "industrial",
            pixel_prompts=made_with,
            device="cpu",
        )

    def _too_old(self, what: str) -> ExportError:
        return ExportError(
            f"{self.folder} was exported by an older tipsomaly: its graph scores whole images "
            f"only ({what}); export it again"
        )

    def __repr__(self) -> str:
        return (
            f"ExportedDetector({str(self.folder)!r}, class {self.class_name!r}, "
            f"{self.format} on {self.runtime}, {self.image_size} px, {self.mode})"
        )

    # -- what the pipeline asks of an engine -------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode

    @property
    def any_class(self) -> str:  # type: ignore[override]
        return self.class_name

    @property
    def identity(self) -> Identity:
        return dataclasses.replace(
            Identity.from_dict(self.record["identity"]),
            tiling=self.config.tiling,
            roi=None if self._roi is None else roi_digest(self._roi),
            engine=self.runtime,
            precision=self.precision,
        )

    @property
    def patch_size(self) -> int:  # type: ignore[override]
        outputs = {o["name"]: o["shape"] for o in self.record["graph"]["outputs"]}
        if "patch_evidence" in outputs:
            n = int(outputs["patch_evidence"][1])
            return self.image_size // int(round(n**0.5))
        return 14

    def thresholds_for(self, class_name: str) -> Thresholds | None:
        """The baked profile's thresholds, only for the scores they were calibrated on.

        Raises:
            SetupMismatchError: thresholds calibrated with int8 scores for an fp32 or bf16
                engine, or the reverse (one line, :func:`~tipsomaly.identity.
                calibration_diff`).
        """
        if self.baked is None or class_name != self.class_name:
            return None
        record = self.record["thresholds"] or {}
        problems = calibration_diff(record.get("calibrated_with"), self.identity)
        if problems:
            raise SetupMismatchError(
                f"the thresholds in {self.folder / 'export.json'} were calibrated on other "
                f"scores: {'; '.join(problems)}; export again for this engine"
            )
        return Thresholds.from_dict(
            {self.mode: {k: _calibration(record.get(k)) for k in ("image", "pixel")}}
        )

    def check_drift(
        self,
        recent_scores: Sequence[float],
        normal_reviewed: int,
        normal_flagged: int,
        mode: str | None = None,
        alpha: float = 0.01,
    ) -> DriftReport:
        """The baked profile's drift check, as :meth:`Profile.check_drift
        <tipsomaly.method.profile.Profile.check_drift>` runs it, against the calibration
        scores of this engine's thresholds (an int8 export's own, recalibrated ones).

        Raises:
            NotCalibratedError: no calibrated image threshold, or an export that does not
                record its calibration scores (made by an older tipsomaly).
            SetupMismatchError: as :meth:`thresholds_for`.
        """
        thresholds = self.thresholds_for(self.class_name)
        calib = None if thresholds is None else thresholds.get(self.mode, "image")
        if calib is None:
            raise NotCalibratedError(f"{self.folder} holds no calibrated image threshold")
        scores = ((self.record["thresholds"] or {}).get("calibration") or {}).get("scores")
        if not scores:
            raise NotCalibratedError(
                f"{self.folder / 'export.json'} records no calibration scores (an older "
                "export): export it again to check it for drift"
            )
        recent = list(recent_scores)
        calibration = [float(v) for v in scores]
        return check_drift(
            calibration, recent, normal_reviewed, normal_flagged, calib.promised_rate, alpha
        )

    def profile_names(self) -> dict[str, str]:
        if self.baked is None:
            return {}
        return {self.class_name: f"{self.baked.get('path') or 'profile'} (in {self.folder})"}

    def check_classes(self, class_names: Iterable[str]) -> None:
        """Refuse a class the export was not made for (its text embeddings are baked in).

        Raises:
            ExportError: naming both classes and how to export the other.
        """
        for name in class_names:
            if name is not None and name != self.class_name:
                raise ExportError(
                    f"{self.folder} was exported for class {self.class_name!r}, not {name!r} "
                    "(an export is of one class: its text embeddings are for that class only); "
                    f"export again with --class-name {name!r}"
                )

    def iter_predict(self, inputs, class_names=None, **kwargs: Any) -> Iterator[Prediction]:  # type: ignore[override]
        """:meth:`Predictor.iter_predict`; ``class_names`` may be left out (the export's)."""
        if kwargs.get("roi") is not None and not self.has_evidence:
            raise self._too_old("no ROI")
        return super().iter_predict(inputs, class_names or self.class_name, **kwargs)

    def predict(self, inputs, class_names=None, **kwargs: Any) -> list[Prediction]:  # type: ignore[override]
        return super().predict(inputs, class_names or self.class_name, **kwargs)

    def score(self, images: torch.Tensor, class_names: Sequence[str]) -> DetectorOutput:
        out = self.run(images.numpy())
        nan = torch.full((images.shape[0],), float("nan"))  # what a version-1 graph lacks
        fill = {n: nan[:, None] if n == "patch_evidence" else nan for n in SCORE_NAMES}
        given = {n: torch.from_numpy(np.asarray(v)) for n, v in out.items() if n in SCORE_NAMES}
        return DetectorOutput(**{**fill, **given})

    # -- the graph ---------------------------------------------------------------------------
    @property
    def runner(self) -> GraphRunner:
        """The compiled graph (compiled on first use, after the files' checksums)."""
        if self._runner is None:
            graph = self.record["graph"]
            for name, expected in (graph.get("sha256") or {}).items():
                path = self.folder / name
                try:
                    actual = file_digest(path)
                except OSError as exc:
                    raise ExportError(f"{path}: cannot read ({exc.strerror or exc})") from None
                if actual != expected:
                    raise ExportError(
                        f"{path} is damaged or was replaced (its SHA-256 differs from the one "
                        "in export.json): export again"
                    )
            runner = open_runner(
                self.folder / graph["file"],
                self.runtime,
                threads=self.threads,
                bf16=self.precision == "bf16",
            )
            wanted = SCORE_NAMES if self.has_evidence else SCORE_NAMES[:4]
            missing = [n for n in wanted if n not in runner.output_names]
            if missing:
                raise ExportError(f"{self.folder}: the graph lacks the outputs {missing}")
            self._runner = runner
        return self._runner

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """(B, 3, S, S) float32 images in [0, 1] → the graph's outputs by name."""
        s = self.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (3, s, s):
            raise ValueError(f"images must be (B, 3, {s}, {s}), got {tuple(images.shape)}")
        runner = self.runner
        with self._lock:
            return runner(np.ascontiguousarray(images, dtype=np.float32))


def _calibration(value: object) -> dict | None:
    """A recorded threshold as :meth:`Thresholds.from_dict` reads it (None: none)."""
    return value if isinstance(value, dict) and "n" in value else None


def _precision(record: dict, runtime: str, asked: str | None, folder: Path) -> str:
    """The precision an export runs in: its graph's (fp32 or int8), or bf16 asked of an fp32
    graph on OpenVINO; an int8 graph runs on the runtime it was quantized for.

    Raises:
        InvalidOptionError: another precision than the graph's (named, with the way out).
    """
    graph = str(record["graph"].get("precision", "fp32"))
    if graph == "int8" and runtime != DEFAULT_RUNTIME[record["graph"]["format"]]:
        raise InvalidOptionError(
            f"{folder} is int8, quantized for {DEFAULT_RUNTIME[record['graph']['format']]}; "
            f"{runtime} would compute other scores than its thresholds were calibrated on"
        )
    if asked in (None, graph) or asked in FP32 and graph == "fp32":
        return graph
    if asked == "bf16" and graph == "fp32" and runtime == "openvino":
        return "bf16"
    raise InvalidOptionError(
        f"precision {asked}: {folder} is an {graph} export"
        + ("" if asked != "int8" else "; export it with --precision int8")
    )
