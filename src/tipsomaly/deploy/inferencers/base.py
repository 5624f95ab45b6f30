"""The ``predict`` contract over an exported graph: :class:`ExportedDetector`.

An :class:`ExportedDetector` reads an export folder (``export.json`` and the graph), decodes
and resizes images with the very functions the PyTorch path uses
(:func:`~tipsomaly.data.images.load_image`, :func:`~tipsomaly.data.images.preprocess`), runs
the graph on a runtime (ONNX Runtime or OpenVINO) and gives the same
:class:`~tipsomaly.method.detector.Prediction` objects as
:class:`~tipsomaly.method.detector.Detector`: scores, the map at the model size and at the
image's own size, the export's mode and calibrated thresholds. It has the attributes
:func:`tipsomaly.runners.predict.run_predict` reads (``model.name``, ``image_size``, ``sigma``,
``cls``, ``prompts.name``, ``pixel_prompts``, ``mode``, ``profiles``, ``batch_size``), so
``tipsomaly predict --model EXPORT_DIR`` writes the same outputs as with a model.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ...data.images import ImageInput, ImageLoadError, load_image, preprocess
from ...fingerprint import file_digest
from ...method.calibration import Calibration
from ...method.detector import NON_FINITE, LoadedImage, Prediction
from .._extras import available
from ..graph import SCORE_NAMES
from ..metadata import ExportError, read_metadata

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_RUNTIME",
    "RUNTIMES",
    "BakedProfile",
    "ExportedDetector",
    "GraphRunner",
    "open_runner",
]

#: each runtime, the graph formats it reads, and the extra that installs it
RUNTIMES = {
    "onnxruntime": (("onnx",), "onnx"),
    "openvino": (("onnx", "openvino"), "openvino"),
}
#: the runtime a format runs on unless told otherwise
DEFAULT_RUNTIME = {"onnx": "onnxruntime", "openvino": "openvino"}


class GraphRunner(Protocol):
    """A compiled graph: (B, 3, S, S) float32 images → ``{output name: array}``."""

    runtime: str
    input_name: str
    output_names: tuple[str, ...]
    version: str

    def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]: ...


def open_runner(
    path: str | os.PathLike, runtime: str, *, threads: int | None = None
) -> GraphRunner:
    """A :class:`GraphRunner` of the graph file ``path`` on ``runtime`` (``onnxruntime`` or
    ``openvino``), fp32.

    Raises:
        ExportError: an unknown runtime.
        MissingExtraError: the runtime is not installed.
    """
    if runtime == "onnxruntime":
        from .onnx import OnnxRunner

        return OnnxRunner(path, threads=threads)
    if runtime == "openvino":
        from .openvino import OpenVinoRunner

        return OpenVinoRunner(path, threads=threads)
    raise ExportError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")


@dataclass(frozen=True)
class ExportedModel:
    """The TIPS weights an export was made from (``model.name`` as run_predict reads it)."""

    name: str
    fingerprint: str | None = None


@dataclass(frozen=True)
class ExportedPrompts:
    """The fixed prompt ensemble whose embeddings an export holds."""

    name: str
    digest: str | None = None


@dataclass(frozen=True)
class ExportedPixelPrompts:
    """The learned pixel prompts whose embeddings an export holds (``metadata["source"]``)."""

    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BakedProfile:
    """What remains of a few-shot profile in an export: its bank is in the graph; here are
    its name, the calibrated thresholds of the export's mode and its ``info`` (reference
    counts), in the shape :class:`~tipsomaly.method.profile.Profile` has them."""

    name: str
    thresholds: dict[str, dict[str, Calibration | None]]
    info: dict[str, Any] = field(default_factory=dict)


_CALIBRATION_FIELDS = tuple(f.name for f in fields(Calibration))


def _calibration(value: object) -> Calibration | None:
    if not isinstance(value, dict):
        return None
    return Calibration(**{k: value[k] for k in _CALIBRATION_FIELDS})


class ExportedDetector:
    """An export folder as a detector: :meth:`predict` / :meth:`iter_predict` as
    :class:`~tipsomaly.method.detector.Detector` has them, for the export's one class.

    Args:
        folder: an export folder (``export.json`` + graph), from ``tipsomaly export``.
        runtime: ``"onnxruntime"`` or ``"openvino"``; default: the format's own.
        batch_size: images per graph run.
        threads: the runtime's intra-op threads (None: its default).

    The runtime compiles the graph on first use (:attr:`runner`); the graph files' SHA-256
    are checked against ``export.json`` then.

    Raises:
        ExportError: no export in ``folder``, a malformed record, a runtime that cannot read
            the format.
        MissingExtraError: the runtime is not installed (names the extra).
    """

    device = torch.device("cpu")
    dtype = torch.float32

    def __init__(
        self,
        folder: str | os.PathLike,
        *,
        runtime: str | None = None,
        batch_size: int = 8,
        threads: int | None = None,
    ) -> None:
        self.folder = Path(folder)
        self.record = record = read_metadata(self.folder)
        graph = record["graph"]
        self.format: str = graph["format"]
        self.runtime = runtime or DEFAULT_RUNTIME[self.format]
        if self.runtime not in RUNTIMES:
            raise ExportError(f"runtime must be one of {', '.join(RUNTIMES)}, got {runtime!r}")
        formats, extra = RUNTIMES[self.runtime]
        if self.format not in formats:
            raise ExportError(f"{self.runtime} cannot run an {self.format} export ({self.folder})")
        module = "onnxruntime" if self.runtime == "onnxruntime" else "openvino"
        if not available(module):
            from .._extras import MissingExtraError

            raise MissingExtraError(
                f"running the {self.format} export {self.folder} needs {module}, which is not "
                f"installed: pip install 'tipsomaly[{extra}]'"
            )
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.threads = threads
        self.class_name: str = record["class_name"]
        self.image_size: int = int(record["image_size"])
        self.sigma = float(record["sigma"])
        self.cls: str = record["cls"]
        self.mode: str = record["mode"]
        model = record["model"] or {}
        self.model = ExportedModel(str(model.get("name", "?")), model.get("fingerprint"))
        prompts = record["prompts"] or {}
        self.prompts = ExportedPrompts(str(prompts.get("name", "?")), prompts.get("digest"))
        pixel = record["pixel_prompts"]
        self.pixel_prompts = None if pixel is None else ExportedPixelPrompts(dict(pixel))
        thresholds = record["thresholds"] or {}
        self.threshold = _calibration(thresholds.get("image"))
        self.pixel_threshold = _calibration(thresholds.get("pixel"))
        self.profiles: dict[str, BakedProfile] = {}
        if record.get("profile") is not None:
            baked = record["profile"]
            self.profiles[self.class_name] = BakedProfile(
                name=f"{baked.get('path') or 'profile'} (in export {self.folder})",
                thresholds={self.mode: {"image": self.threshold, "pixel": self.pixel_threshold}},
                info={"references": baked.get("references") or {}},
            )
        self._runner: GraphRunner | None = None
        self._lock = threading.Lock()  # one graph run at a time (runtimes reuse buffers)

    def __repr__(self) -> str:
        return (
            f"ExportedDetector({str(self.folder)!r}, class {self.class_name!r}, "
            f"{self.format} on {self.runtime}, {self.image_size} px, {self.mode})"
        )

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
            runner = open_runner(self.folder / graph["file"], self.runtime, threads=self.threads)
            missing = [n for n in SCORE_NAMES if n not in runner.output_names]
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

    # -- the Detector contract ---------------------------------------------------------------
    def check_class(self, class_name: str) -> None:
        """Refuse a class the export was not made for (its text embeddings are baked in).

        Raises:
            ExportError: naming both classes and how to export the other.
        """
        if class_name != self.class_name:
            raise ExportError(
                f"{self.folder} was exported for class {self.class_name!r}, not "
                f"{class_name!r}: its text embeddings are for that class only; export again "
                f"with --class-name {class_name!r}"
            )

    def predict(
        self,
        inputs: str | os.PathLike | ImageInput | Iterable[str | os.PathLike | ImageInput],
        class_names: str | Sequence[str] | None = None,
        *,
        batch_size: int | None = None,
        on_error: str = "raise",
    ) -> list[Prediction]:
        """Predictions for a list of inputs (or a single one); see :meth:`iter_predict`."""
        if isinstance(inputs, (str, os.PathLike, np.ndarray, torch.Tensor)) or hasattr(
            inputs, "getpixel"
        ):
            if not (isinstance(inputs, torch.Tensor) and inputs.ndim == 4):
                inputs = [inputs]
        return list(
            self.iter_predict(inputs, class_names, batch_size=batch_size, on_error=on_error)
        )

    def iter_predict(
        self,
        inputs: Iterable[str | os.PathLike | ImageInput],
        class_names: str | Sequence[str] | None = None,
        *,
        batch_size: int | None = None,
        on_error: str = "raise",
    ) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per input, in order, as batches complete.

        ``class_names``: the export's class (one name, one per input, or None). The other
        arguments as :meth:`tipsomaly.method.detector.Detector.iter_predict`.

        Raises:
            ExportError: a class name other than the export's.
        """
        if on_error not in ("raise", "record"):
            raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}")
        if class_names is None:
            class_names = self.class_name
        if isinstance(class_names, str):
            self.check_class(class_names)
        else:
            class_names = list(class_names)
            for name in dict.fromkeys(class_names):
                self.check_class(name)
        batch_size = batch_size or self.batch_size
        pending: list[LoadedImage] = []
        for prepared in self._load(inputs, class_names, lookahead=2 * batch_size):
            if prepared.error is not None and on_error == "raise":
                raise ImageLoadError(prepared.source, prepared.error)
            pending.append(prepared)
            if sum(p.tensor is not None for p in pending) >= batch_size:
                yield from self._run(pending)
                pending = []
        if pending:
            yield from self._run(pending)

    # -- internals -------------------------------------------------------------------------
    def _load(
        self, inputs: Iterable[object], class_names: str | Sequence[str], lookahead: int
    ) -> Iterator[LoadedImage]:
        """Inputs decoded and resized in a background thread, in input order."""
        names = itertools.repeat(class_names) if isinstance(class_names, str) else iter(class_names)
        queue: deque[Future[LoadedImage]] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tipsomaly-load") as pool:
            for index, item in enumerate(inputs):
                name = next(names, None)
                if name is None:
                    raise ValueError(f"fewer class names than inputs (input {index})")
                queue.append(pool.submit(self._prepare, item, name, index))
                if len(queue) > lookahead:
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()

    def _prepare(self, item: object, class_name: str, index: int) -> LoadedImage:
        """One input → (3, S, S) tensor, as :class:`Detector` prepares it."""
        if isinstance(item, (str, os.PathLike)):
            source = str(item)
            try:
                image = load_image(item)
            except ImageLoadError as exc:
                return LoadedImage(source, class_name, error=exc.reason)
            return LoadedImage(
                source,
                class_name,
                tensor=preprocess(image, self.image_size),
                original_size=(image.height, image.width),
            )
        source = f"<input {index}>"
        try:
            tensor = preprocess(item, self.image_size)  # type: ignore[arg-type]
        except (TypeError, ValueError) as exc:
            return LoadedImage(source, class_name, error=str(exc))
        return LoadedImage(source, class_name, tensor=tensor, original_size=_input_hw(item))

    def _run(self, items: list[LoadedImage]) -> Iterator[Prediction]:
        ready = [i for i in items if i.tensor is not None]
        out: dict[str, np.ndarray] = {}
        if ready:
            out = self.run(torch.stack([i.tensor for i in ready]).numpy())
        with_profile = bool(self.profiles)
        mode = self.mode if with_profile else "zero-shot"
        threshold = None if self.threshold is None else self.threshold.threshold
        pixel = None if self.pixel_threshold is None else self.pixel_threshold.threshold
        k = 0
        for item in items:
            if item.tensor is None:
                yield Prediction(item.source, item.class_name, error=item.error)
                continue
            assert item.original_size is not None
            scores = [float(out[n][k]) for n in SCORE_NAMES[:3]]
            m = np.asarray(out["anomaly_map"][k], dtype=np.float32)
            k += 1
            if not (np.isfinite(scores).all() and np.isfinite(m).all()):
                logger.warning("%s: non-finite anomaly score or map", item.source)
                yield Prediction(item.source, item.class_name, error=NON_FINITE)
                continue
            # the same resize as Detector's: bilinear, align_corners=False, on the CPU
            original = F.interpolate(
                torch.from_numpy(m)[None, None],
                size=item.original_size,
                mode="bilinear",
                align_corners=False,
            )[0, 0]
            yield Prediction(
                source=item.source,
                class_name=item.class_name,
                image_score=scores[0],
                score_cls1=scores[1],
                score_cls2=scores[2],
                anomaly_map=m,
                anomaly_map_original=original.numpy(),
                original_size=item.original_size,
                mode=mode,
                threshold=threshold,
                pixel_threshold=pixel,
            )


def _input_hw(item: object) -> tuple[int, int]:
    """(H, W) of an in-memory input: a PIL image, a (C, H, W) tensor or an (H, W[, C]) array."""
    if hasattr(item, "size") and hasattr(item, "getpixel"):  # PIL: size is (W, H)
        w, h = item.size  # type: ignore[attr-defined]
        return int(h), int(w)
    shape = tuple(item.shape)  # type: ignore[attr-defined]
    if isinstance(item, torch.Tensor) and len(shape) == 3:
        return int(shape[1]), int(shape[2])
    return int(shape[0]), int(shape[1])
