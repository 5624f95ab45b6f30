"""The service without HTTP: load the detector, decode uploads, queue them, shape the answers.

:class:`Service` is what the routes call. The detector is built by the ``load`` function in a
background thread (``status`` is ``"loading"`` until it and the allowed classes' text
embeddings are ready, so ``/health`` can answer 503 meanwhile), then served by one
:class:`~.batching.MicroBatcher` thread: the only thread that touches the model.

Uploads are decoded by :func:`tipsomaly.data.images.load_image` itself, from a private
temporary file per upload (removed at once): the same header-first pixel limit, decompression-
bomb handling, EXIF orientation and colour rules as ``tipsomaly predict`` on that file, so the
service's scores equal the CLI's bit for bit. An optional ROI mask of a request (its ``roi``
part) is decoded the same way and read by :func:`tipsomaly.data.roi.as_roi`, as ``predict
--roi`` reads its file. The decoded images, each with its request's ROI, go to the predictor's
:meth:`~tipsomaly.method.pipeline.Predictor.predict` (the one pipeline: a
:class:`~tipsomaly.method.detector.Detector` or an exported graph, tiled or not) in
micro-batches; images of different requests, classes and ROIs share a forward pass (per-class
text embeddings are cached in the detector). Decisions and defect records are the pipeline's.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .. import __version__
from ..data.images import ImageLoadError, load_image
from ..data.roi import RoiError, as_roi
from ..errors import InvalidOptionError, TipsomalyError, first_line
from ..method.decision import decide
from ..records.images import map_png as grey_png
from ..report.overlay import overlay
from ..validation import in_range
from .batching import BatchInfo, MicroBatcher
from .config import MAX_CLASS_NAME, RETURN_MAPS, ServeConfig, check_class_name
from .errors import BadRequestError, ConflictError, UnavailableError
from .monitoring import Metrics
from .profiles import NO_PROFILE, ProfileRef, load_current, monitor, ref_of, versions_of
from .recording import Decision, Recorder

if TYPE_CHECKING:
    from ..identity import Identity
    from ..method.pipeline import Predictor
    from ..method.prediction import Prediction

logger = logging.getLogger(__name__)

#: seconds a client is told to wait while the model loads
LOADING_RETRY_S = 5
#: distinct class names served when any name is accepted (no --classes, no profile): each costs
#: a text-tower pass and a cache entry, so a client cannot grow them without bound
MAX_OPEN_CLASSES = 256
#: what ``/v1/info`` reports of the recorded settings (``INFO``) and of the config's fields
INFO = ("image_size", "prompt_type", "pixel_prompts", "sigma", "cls", "tile", "tile_overlap", "roi")
INFO_FIELDS = ("device", "tiling", "image_threshold", "pixel_threshold", "min_defect_area")
#: the settings ``/v1/info`` reports as ``limits``
LIMITS = ("batch_size", "max_wait_ms", "max_queue", "max_files", "max_upload_bytes", "max_pixels")


def upload_label(name: str | None, index: int) -> str:
    """A client's file name made safe to echo back: printable, at most 120 characters, or
    ``file N`` (1-based) when it has none."""
    text = "".join(c if c.isprintable() else "?" for c in (name or "").strip())
    if not text:
        return f"file {index + 1}"
    return text if len(text) <= 120 else text[:117] + "..."


def _png(array: np.ndarray, mode: str) -> str:
    buf = io.BytesIO()
    Image.fromarray(array, mode=mode).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def map_png(anomaly_map: np.ndarray) -> str:
    """(H, W) map in [0, 1] → base64 8-bit grey PNG, ``round(255 · clip(map, 0, 1))``."""
    return base64.b64encode(grey_png(anomaly_map)).decode("ascii")


def station_of(value: str | None) -> str | None:
    """The ``X-Station-Id`` header's value: printable, at most 200 characters (422 else)."""
    if value is None or not value.strip():
        return None
    if len(value) > MAX_CLASS_NAME or not value.isprintable():
        raise BadRequestError(
            f"the X-Station-Id header must be printable and at most {MAX_CLASS_NAME} characters"
        )
    return value.strip()


def map_npy(anomaly_map: np.ndarray) -> str:
    """(H, W) map → base64 of its float32 ``.npy`` file (``np.load(io.BytesIO(bytes))``)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(anomaly_map, dtype=np.float32), allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


class Service:
    """The detector behind a bounded micro-batching queue (see the module doc; the arguments
    are :func:`~.app.create_app`'s)."""

    def __init__(
        self,
        config: ServeConfig,
        load: Callable[[], Predictor],
        *,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.config = config
        self._load = load
        self._on_fatal = on_fatal
        self._lock = threading.Lock()
        self.status = "loading"
        self.error: str | None = None
        self.detector: Predictor | None = None
        self.identity: Identity | None = None  # the detector's, read once it is loaded
        self.batcher: MicroBatcher | None = None
        self.started_at = time.time()
        self.load_s: float | None = None
        self.requests = 0
        self._seen: set[str] = set()  # class names served (when any name is accepted)
        self._tmp: str | None = None  # uploads' folder, made by start(), removed by close()
        self._thread: threading.Thread | None = None
        # held by the model thread around each batch, and by a reload while it swaps profiles:
        # a batch is decided by one set of profile versions, the one its records name
        self._model_lock = threading.Lock()
        self._reload_lock = threading.Lock()  # one reload at a time
        self.versions: dict[str, ProfileRef] = {}
        self.metrics = Metrics(lambda: 0 if self.batcher is None else self.batcher.queued)
        self.recorder = None if config.db is None else Recorder(config, self.metrics)

    # -- life ------------------------------------------------------------------------------
    def start(self) -> None:
        """Load the detector in a background thread (returns at once)."""
        self._tmp = tempfile.mkdtemp(prefix="tipsomaly-serve-")  # 0700: ours alone
        self._thread = threading.Thread(target=self._load_now, name="tipsomaly-load", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until loading ends (ready or failed); True when ready."""
        if self._thread is not None:
            self._thread.join(timeout)
        return self.status == "ready"

    def _load_now(self) -> None:
        start = time.monotonic()
        try:
            detector = self._load()
            detector.warm_up(self._allowed(detector) or ())
            identity = detector.identity
            batcher = MicroBatcher(
                self._forward,
                batch_size=self.config.batch_size,
                max_wait_s=self.config.max_wait_ms / 1000,
                max_queue=self.config.max_queue,
            )
        except Exception as exc:  # noqa: BLE001 - reported by /health and to on_fatal
            with self._lock:
                self.status = "failed"
                self.error = first_line(exc)
            if self._on_fatal is not None:
                self._on_fatal(exc)  # the caller reports it (tipsomaly serve: one line, exit 1)
            else:
                logger.error("the model could not be loaded: %s", self.error)
            return
        with self._lock:
            if self.status == "stopping":  # closed while loading
                return
            self.detector, self.identity = detector, identity
            self.versions = versions_of(detector)
            self.metrics.versions(self.versions)
            self.batcher = batcher.start()
            self.load_s = time.monotonic() - start
            self.status = "ready"
        logger.info("model ready in %.1f s: serving", self.load_s)

    def close(self, timeout: float | None = None) -> None:
        """Refuse new requests, answer the queued images, stop the model thread, clean up.

        Closed while loading, it first lets the loading finish (within ``timeout``): a process
        must not exit while a thread is inside PyTorch's native code.
        """
        with self._lock:
            loading = self.status == "loading"
            self.status = "stopping"
        if loading and self._thread is not None:
            self._thread.join(timeout)
        with self._lock:
            batcher = self.batcher
        if batcher is not None and not batcher.close(timeout):
            logger.warning("the model thread did not finish within %s s", timeout)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        if self.recorder is not None:
            self.recorder.close()

    def check_ready(self) -> Predictor:
        """The detector, or :class:`UnavailableError` (503) saying why there is none."""
        status = self.status
        if status == "ready" and self.detector is not None:
            return self.detector
        if status == "loading":
            raise UnavailableError(
                "the model is loading; retry shortly", retry_after=LOADING_RETRY_S
            )
        if status == "failed":
            raise UnavailableError(f"the model could not be loaded: {self.error}")
        raise UnavailableError("the service is stopping", retry_after=LOADING_RETRY_S)

    # -- classes -----------------------------------------------------------------------------
    def _allowed(self, detector: Predictor) -> list[str] | None:
        names = dict.fromkeys([*self.config.classes, *detector.profile_classes()])
        return list(names) or None

    @property
    def classes(self) -> list[str] | None:
        """The class names requests may use (``None``: any)."""
        if self.detector is None:
            return list(self.config.classes) or None
        return self._allowed(self.detector)

    def resolve_class(self, class_name: str | None) -> str:
        """The request's class: given, or the one profile's when there is exactly one.

        Raises:
            BadRequestError: none given and no single profile, a malformed name, or a name this
                server does not serve (the message lists those it does).
        """
        detector = self.check_ready()
        if class_name is None or not class_name.strip():
            profiles = detector.profile_classes()
            if len(profiles) == 1:
                return profiles[0]
            hint = f" (one of: {', '.join(map(repr, self.classes))})" if self.classes else ""
            raise BadRequestError(f"class_name is required{hint}")
        try:
            check_class_name(class_name)
            detector.check_classes([class_name])  # an export scores its own class only
        except TipsomalyError as exc:
            raise BadRequestError(first_line(exc)) from None
        allowed = self.classes
        if allowed is not None and class_name not in allowed:
            raise BadRequestError(
                f"unknown class_name {class_name!r}: this server serves "
                f"{', '.join(map(repr, allowed))} (see --classes and --profile)"
            )
        if allowed is None:
            with self._lock:
                if class_name not in self._seen and len(self._seen) >= MAX_OPEN_CLASSES:
                    raise BadRequestError(
                        f"this server has served {MAX_OPEN_CLASSES} class names, its most "
                        "without --classes; restart it with --classes NAME..."
                    )
                self._seen.add(class_name)
        return class_name

    @staticmethod
    def check_options(threshold: float | None, return_map: str) -> None:
        """Raises :class:`BadRequestError` for a threshold outside [0, 2] or an unknown
        ``return_map``."""
        if return_map not in RETURN_MAPS:
            raise BadRequestError(
                f"return_map must be one of {', '.join(RETURN_MAPS)}, got {return_map!r}"
            )
        if threshold is not None:
            try:
                in_range(threshold, "threshold", 0, 2, hint="image scores are in [0, 2]")
            except InvalidOptionError as exc:
                raise BadRequestError(str(exc)) from None

    # -- images ----------------------------------------------------------------------------
    def decode(self, uploads: Sequence[tuple[str, bytes]]) -> list[Image.Image]:
        """Uploaded files (label, bytes) → upright 8-bit RGB images, as ``load_image`` reads
        files (pixel limit from the header first, then decode).

        Raises:
            BadRequestError: naming each upload that cannot be read and why (all of them, so
                one request shows every problem); none is scored then.
        """
        images: list[Image.Image] = []
        problems: list[dict[str, Any]] = []
        for label, data in uploads:
            try:
                images.append(self._decode_one(data))
            except ImageLoadError as exc:
                problems.append({"filename": label, "error": exc.reason})
        if problems:
            shown = "; ".join(f"{p['filename']}: {p['error']}" for p in problems[:5])
            more = f" and {len(problems) - 5} more" if len(problems) > 5 else ""
            raise BadRequestError(
                f"cannot read {len(problems)} of {len(uploads)} upload(s): {shown}{more}",
                errors=problems,
            )
        return images

    def decode_roi(self, label: str, data: bytes) -> np.ndarray:
        """A request's ``roi`` part → (H, W) bool mask (True = inspect), read as ``predict
        --roi`` reads its file (:func:`~tipsomaly.data.roi.as_roi` of the decoded image).

        Raises:
            BadRequestError: naming the part: unreadable, or no white pixel.
        """
        try:
            mask = as_roi(self._decode_one(data))
        except (ImageLoadError, RoiError) as exc:
            reason = exc.reason if isinstance(exc, ImageLoadError) else first_line(exc)
            raise BadRequestError(
                f"cannot read the roi part ({label}): {reason}",
                errors=[{"filename": label, "error": reason}],
            ) from None
        if not mask.any():
            reason = "the ROI mask has no white pixel: nothing would be inspected"
            raise BadRequestError(
                f"the roi part ({label}): {reason}", errors=[{"filename": label, "error": reason}]
            )
        return mask

    def _decode_one(self, data: bytes) -> Image.Image:
        if self._tmp is None:
            raise UnavailableError("the service is not started", retry_after=LOADING_RETRY_S)
        fd, path = tempfile.mkstemp(dir=self._tmp, suffix=".upload")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            return load_image(path, max_pixels=self.config.max_pixels)
        finally:
            os.unlink(path)

    def check_room(self, n: int) -> None:
        """Refuse ``n`` images at once (503, ``Retry-After``) when the queue cannot take them
        now, before any is decoded (:meth:`submit` checks again, atomically)."""
        self.check_ready()
        assert self.batcher is not None
        self.batcher.check_room(n)

    def submit(
        self, images: Sequence[Image.Image], class_name: str, roi: np.ndarray | None = None
    ) -> list[Future]:
        """Queue the images (all or none), each with ``roi`` (None: the server's ``--roi``,
        else the whole image); futures of ``(Prediction, BatchInfo)``.

        Raises:
            UnavailableError: not ready; QueueFullError (503, ``retry_after``) when full.
        """
        self.check_ready()
        assert self.batcher is not None
        futures = self.batcher.submit([((image, roi), class_name) for image in images])
        with self._lock:
            self.requests += 1
        return futures

    def _forward(
        self, items: list[tuple[Image.Image, np.ndarray | None]], classes: list[str]
    ) -> list[tuple[Prediction, ProfileRef]]:
        """One micro-batch on the model thread: its images, each with its own ROI, in one
        forward pass (tiled: each image's tiles in batches of the predictor's batch size, as
        ``predict`` cuts them); each prediction with the profile version that decided it."""
        images = [image for image, _ in items]
        rois = [roi for _, roi in items]
        self.metrics.batch.observe(len(items))
        with self._model_lock:
            detector, versions = self.detector, self.versions
            assert detector is not None
            predictions = detector.predict(
                images,
                classes,
                batch_size=None if detector.tile is not None else len(images),
                on_error="record",
                roi=None if all(r is None for r in rois) else rois,
            )
        return [(p, versions.get(p.class_name, NO_PROFILE)) for p in predictions]

    # -- records and profile versions ----------------------------------------------------------
    def record(
        self,
        uploads: Sequence[tuple[str, bytes]],
        answers: Sequence[tuple[tuple[Prediction, ProfileRef], BatchInfo]],
        results: Sequence[dict[str, Any]],
        *,
        station: str | None,
        started: float,
    ) -> None:
        """Store the request's records (``--db``); sets each result's ``record_id``.

        Raises:
            UnavailableError: strict records that cannot be stored (503).
        """
        if self.recorder is None:
            return
        decisions = [
            Decision(label, data, pred, result, ref)
            for (label, data), ((pred, ref), _), result in zip(
                uploads, answers, results, strict=True
            )
        ]
        identity = None if self.identity is None else self.identity.to_dict()
        latency = (time.perf_counter() - started) * 1000.0
        self.recorder.write(decisions, station=station, identity=identity, latency_ms=latency)

    def reload(self) -> dict[str, Any]:
        """Switch to the profile folders' current versions (see :mod:`.profiles`): the batch
        running finishes on the old ones. Returns each class's previous and current version.

        Raises:
            ConflictError: nothing to reload (an export, no profile) or a folder that cannot be
                read or does not fit the model; the old versions stay in use.
        """
        detector = self.check_ready()
        with self._reload_lock:
            try:
                rebuild = self._engine_built(detector)
                if rebuild:  # the engine of the profile's current version, off the model thread
                    engine = self._load()
                    engine.warm_up(self._allowed(engine) or ())
                    refs = versions_of(engine)
                else:
                    fresh = load_current(detector)
                    refs = {p.class_name: ref_of(p) for p in fresh}
                with self._model_lock:
                    before = self.versions
                    if rebuild:
                        self.detector, self.identity = engine, engine.identity
                    else:
                        detector.set_profiles(fresh, detector.config.mode)  # type: ignore[attr-defined]
                    self.versions = refs
            except (TipsomalyError, ValueError) as exc:
                self.metrics.reloads.labels("failed").inc()
                logger.error("profile reload failed (the old versions stay): %s", first_line(exc))
                raise ConflictError(f"profiles not reloaded: {first_line(exc)}") from None
        self.metrics.reloads.labels("done").inc()
        self.metrics.versions(refs)
        out = []
        for name, ref in sorted(refs.items()):
            old = before.get(name, NO_PROFILE)
            out.append(
                {
                    "class_name": name,
                    "previous": old.to_dict(),
                    "current": ref.to_dict(),
                    "changed": old.id != ref.id,
                }  # fmt: skip
            )
        shown = ", ".join(f"{o['class_name']} v{o['current']['version']}" for o in out)
        logger.info("profiles reloaded: %s", shown)
        return {"profiles": out}

    def _engine_built(self, detector: Predictor) -> bool:
        """Whether the detector is an engine ``--engine onnxruntime|openvino`` built for its
        profile (so a reload builds it again for the profile's current version); an export
        given as ``--model`` holds its profile for good. A reload loads it again
        (``load``: exported, and for int8 recalibrated, on first use, as the engine cache's key
        names the profile's content) while the old one serves, then swaps it in."""
        settings = self.config.settings
        engine = getattr(settings, "engine", None)
        return engine not in (None, "torch") and getattr(detector, "baked", None) is not None

    def monitor(self, store: Any) -> dict[str, Any]:
        """``GET /v1/monitor`` (:func:`.profiles.monitor`) of the versions deciding now."""
        detector = self.check_ready()
        return monitor(detector, self.versions, store)

    # -- answers -----------------------------------------------------------------------------
    def result(
        self,
        label: str,
        image: Image.Image,
        prediction: Prediction,
        info: BatchInfo,
        *,
        threshold: float | None = None,
        return_map: str = "none",
        request_roi: bool = False,
    ) -> dict[str, Any]:
        """One file's answer (the ``results`` entries of ``POST /v1/predict``): the
        prediction's scores, decision and defect records; ``threshold`` (the request's)
        replaces the image threshold; ``request_roi``: the request had a ``roi`` part."""
        p = prediction
        ok = p.error is None
        out: dict[str, Any] = {"filename": label, **p.to_dict()}
        del out["source"]  # the upload's name is its filename
        if threshold is not None:
            is_anomalous = decide(p.image_score, threshold) if ok else None
            out.update(threshold=threshold, threshold_source="request", is_anomalous=is_anomalous)
        roi = "request" if request_roi else "server" if p.roi is not None else None
        out.update(
            roi=roi if ok else None,
            size=[image.height, image.width],
            batch_images=info.size,
            queue_ms=round(info.queue_ms, 3),
            forward_ms=round(info.forward_ms, 3),
            overlay_png=None,
            map_png=None,
            map_npy=None,
        )
        if ok and p.anomaly_map_original is not None:
            if return_map == "png":
                # coloured as `predict` does: with a pixel threshold (a profile) it is the
                # ramp's middle and twice it red, else the fixed [0, 1] scale
                t = p.pixel_threshold
                span = (0.0, 2.0 * t) if t is not None and t > 0 else None
                out["overlay_png"] = _png(overlay(image, p.anomaly_map_original, span=span), "RGB")
                out["map_png"] = map_png(p.anomaly_map_original)
            elif return_map == "npy":
                out["map_npy"] = map_npy(p.anomaly_map_original)
        return out

    def info(self) -> dict[str, Any]:
        """``GET /v1/info``: what is served and how: the detector's identity and settings
        (tiling, ROI, thresholds given; while loading: the settings asked for), its profiles
        with their decisions, the limits and counters."""
        det = self.detector
        config = det.config if det is not None else self.config.settings
        identity = self.identity if det is not None else None
        profiles: list[dict[str, Any]] = []
        if det is not None:
            keys = ("class_name", "path", "mode", "threshold", "pixel_threshold")
            profiles = [
                dict(zip(keys, (name, path, *det.decision(name)[:3]), strict=True))
                for name, path in sorted(det.profile_names().items())
            ]
        elif config is not None:
            profiles = [{"class_name": None, "path": str(p)} for p in config.profiles]
        c = self.config
        stats: dict[str, Any] = {
            "requests": self.requests,
            "uptime_s": round(time.time() - self.started_at, 3),
            "load_s": None if self.load_s is None else round(self.load_s, 3),
        }
        if self.batcher is not None:
            stats.update(self.batcher.stats())
        settings = config.settings() if config is not None else {}
        return {
            "version": __version__,
            "status": self.status,
            "error": self.error,
            "identity": None if identity is None else identity.to_dict(),
            "model": identity.model.get("name") if identity else settings.get("model"),
            "model_spec": settings.get("model"),
            **{k: settings.get(k) for k in INFO},
            **{k: getattr(config, k, None) for k in INFO_FIELDS},
            "dtype": identity.precision if identity else getattr(config, "dtype", None),
            "engine": identity.engine if identity else None,
            "mode": det.mode if det is not None else getattr(config, "scoring_mode", None),
            "profiles": profiles,
            "classes": self.classes,
            "limits": {k: getattr(c, k) for k in LIMITS},
            "auth": c.token is not None,
            "records": None
            if self.recorder is None
            else {
                "db": self.recorder.store.shown,
                "keep_images": c.keep_images is not None,
                "mode": c.records,
            },
            "stats": stats,
        }


__all__ = ["Service", "map_npy", "map_png", "upload_label"]
