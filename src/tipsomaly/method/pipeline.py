"""The one prediction pipeline: images in, :class:`~.prediction.Prediction` s out, any engine.

:class:`Predictor` owns everything that does not depend on what runs the network: iterating
over the inputs, decoding them in a background thread, fitting each image's region of interest,
tiling (plan, crop, blend), batching, upsampling maps to the original size, the decisions
(thresholds given or a profile's, :func:`~.decision.decide`) and the defect records. An engine
is a subclass that supplies only

- :meth:`Predictor.score`: a batch of model inputs (B, 3, S, S) in [0, 1] and their class
  names → a :class:`~.head.DetectorOutput` (scores, maps, the CLS and patch evidence);
- :attr:`Predictor.identity`: what produces its scores (:class:`~tipsomaly.identity.Identity`);
- the profiles' thresholds (:meth:`Predictor.thresholds_for`) and the patch size.

:class:`~.detector.Detector` (PyTorch) and
:class:`~tipsomaly.deploy.inferencers.ExportedDetector` (ONNX Runtime, OpenVINO) are such
engines, so every setting (tiles, ROI, profiles, thresholds) works the same on both.

Scores. Untiled, an image is resized to the input and scored once: ``score_clsK`` =
``global_clsK + local`` (the CLS token's abnormal evidence plus the highest patch evidence).
Tiled (``config.tile``), its tiles are scored in batches and their maps blended
(:mod:`~.tiling`); the score is ``max over the tiles of the CLS evidence + max of the blended
map``. With a region of interest the map is 0 outside it and the local term takes only ROI
evidence (untiled: the patch cells at least half inside; tiled: tiles without an ROI pixel are
not scored); the untiled CLS term is the whole image's. Nothing is stored on the predictor
between two calls, so threads may share one.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from ..data.images import ImageInput, ImageLoadError, load_image, preprocess, to_pil
from ..data.roi import RoiInput, as_roi, boxes_touching, fit_roi, read_roi, roi_cells
from ..identity import Identity
from ..validation import choice
from .config import DetectorConfig
from .decision import Thresholds
from .defects import extract_defects
from .head import DetectorOutput
from .prediction import NON_FINITE, Prediction
from .tiling import MapMerger, TileGrid, auto_tile_size, crop_tiles, plan_tiles, resize_map

logger = logging.getLogger(__name__)

__all__ = ["LoadedImage", "Predictor", "TiledEvidence"]


@dataclass
class LoadedImage:
    """One input decoded and resized for the network (``tensor`` (3, S, S) in [0, 1]), or,
    tiled, decoded only (``image``, RGB: tiles are cut as they are scored); or the reason it
    could not be (``error``). ``roi``: (H, W) bool at the image's size."""

    source: str
    class_name: str
    tensor: torch.Tensor | None = None
    original_size: tuple[int, int] | None = None
    error: str | None = None
    image: Any = None  # PIL.Image.Image (tiled)
    roi: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """Decoded and waiting for the network."""
        return self.error is None and (self.tensor is not None or self.image is not None)


class TiledEvidence(NamedTuple):
    """What the tiles of one image add up to (see :meth:`Predictor.tiled_evidence`).

    ``anomaly_map`` (H, W) float32 on the CPU, blended (0 outside the ROI); ``global_cls1``,
    ``global_cls2`` the highest CLS abnormal evidence over the tiles scored; ``local`` the
    map's maximum; ``tiles`` how many tiles were scored.
    """

    anomaly_map: torch.Tensor
    global_cls1: float
    global_cls2: float
    local: float
    tiles: int

    def score(self, cls: str) -> float:
        """The image score for CLS token ``cls``: its global evidence + ``local``."""
        return (self.global_cls1 if cls == "cls1" else self.global_cls2) + self.local


class NonFiniteError(ArithmeticError):
    """A tile's score or map is not finite."""


class Predictor:
    """The pipeline over an engine (see the module doc); build an engine, not this class.

    Args:
        config: every setting (:class:`~.config.DetectorConfig`).
    """

    #: the side of a patch of the engine's vision tower, in input pixels
    patch_size: int = 14

    def __init__(self, config: DetectorConfig) -> None:
        self.config = config
        self._roi = None if config.roi is None else read_roi(config.roi)

    # -- what an engine supplies -----------------------------------------------------------
    def score(self, images: torch.Tensor, class_names: Sequence[str]) -> DetectorOutput:
        """(B, 3, S, S) float32 images in [0, 1] and their B class names →
        :class:`~.head.DetectorOutput` (any device)."""
        raise NotImplementedError

    @property
    def identity(self) -> Identity:
        """What produces this predictor's scores."""
        raise NotImplementedError

    def thresholds_for(self, class_name: str) -> Thresholds | None:
        """The calibrated thresholds of the class's profile (None: no profile of it)."""
        return None

    def check_classes(self, class_names: Iterable[str]) -> None:
        """Refuse class names the engine cannot score (an export is of one class)."""

    def warm_up(self, class_names: Iterable[str] = ()) -> None:
        """Pay the one-time costs now (kernels, memory pools; a detector's text embeddings of
        ``class_names``), not in the first request: one forward on a blank image."""
        names = list(class_names)
        self.check_classes(names)
        size = self.image_size
        with torch.no_grad():
            self.score(torch.zeros(1, 3, size, size), names[:1] or [self.any_class])

    #: the class name a warm-up scores when none is given
    any_class = "object"

    def profile_names(self) -> dict[str, str]:
        """The classes with a profile, each with its profile's name (a folder)."""
        return {}

    def profile_classes(self) -> list[str]:
        """The classes with a profile, sorted."""
        return sorted(self.profile_names())

    def decision(self, class_name: str) -> tuple[str, float | None, float | None, str | None]:
        """How images of ``class_name`` are judged: (mode, image threshold, pixel threshold,
        source): thresholds given in the config, else its profile's calibrated ones for the
        mode; ``source`` says where the image threshold comes from (``"given"`` /
        ``"profile"``; None without one)."""
        c = self.config
        thresholds = self.thresholds_for(class_name)
        mode = self.mode if thresholds is not None else "zero-shot"
        cal = thresholds or Thresholds()
        image = c.image_threshold if c.image_threshold is not None else cal.value(mode, "image")
        pixel = c.pixel_threshold if c.pixel_threshold is not None else cal.value(mode, "pixel")
        source = (
            "given" if c.image_threshold is not None else "profile" if image is not None else None
        )
        return mode, image, pixel, source

    # -- settings ------------------------------------------------------------------------------
    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def sigma(self) -> float:
        return self.config.sigma

    @property
    def cls(self) -> str:
        return self.config.cls

    @property
    def batch_size(self) -> int:
        return self.config.batch_size

    @property
    def tile(self) -> int | str | None:
        return self.config.tile

    @property
    def mode(self) -> str:
        """How the classes with a profile are scored."""
        return self.config.scoring_mode

    @property
    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.patch_size
        return (g, g)

    def tile_grid(self, image_hw: tuple[int, int]) -> TileGrid | None:
        """The tiles of an (H, W) image under this predictor's setting (None: untiled)."""
        c = self.config
        if c.tile is None:
            return None
        side = (
            auto_tile_size(image_hw, c.image_size, c.tile_overlap)
            if c.tile == "auto"
            else int(c.tile)
        )
        return plan_tiles(image_hw, side, c.tile_overlap)

    # -- predictions ---------------------------------------------------------------------------
    def predict(
        self,
        inputs: str | os.PathLike | ImageInput | Iterable[str | os.PathLike | ImageInput],
        class_names: str | Sequence[str],
        *,
        batch_size: int | None = None,
        on_error: str = "raise",
        roi: RoiInput | Sequence[RoiInput | None] | None = None,
    ) -> list[Prediction]:
        """Predictions for a list of inputs (or a single one); see :meth:`iter_predict`."""
        if isinstance(inputs, (str, os.PathLike, np.ndarray, torch.Tensor)) or hasattr(
            inputs, "getpixel"
        ):
            if not (isinstance(inputs, torch.Tensor) and inputs.ndim == 4):
                inputs = [inputs]
        options = {"batch_size": batch_size, "on_error": on_error, "roi": roi}
        return list(self.iter_predict(inputs, class_names, **options))

    def iter_predict(
        self,
        inputs: Iterable[str | os.PathLike | ImageInput],
        class_names: str | Sequence[str],
        *,
        batch_size: int | None = None,
        on_error: str = "raise",
        roi: RoiInput | Sequence[RoiInput | None] | None = None,
    ) -> Iterator[Prediction]:
        """Yield one :class:`Prediction` per input, in order, as batches complete.

        ``inputs``: image paths, PIL images, arrays (HxW / HxWxC) or tensors (CxHxW); see
        :func:`tipsomaly.data.images.preprocess`. ``class_names``: one name for all inputs or
        one per input. ``on_error="raise"`` stops at the first unreadable image;
        ``"record"`` yields a Prediction with ``error`` set for it and goes on.
        ``roi``: one ROI mask for every input (a file, an (H, W) array or a PIL image; white /
        True = inspected), or a list with one per input; None (or a None entry): the config's
        ``roi``, else the whole image. A mask of another size than its image is resized
        (noted in ``notes``). Tiled, one image is scored at a time, its tiles in batches of
        ``batch_size``.

        Raises:
            ImageLoadError: with ``on_error="raise"``, an unreadable image or ROI mask.
        """
        choice(on_error, "on_error", ("raise", "record"))
        if isinstance(class_names, str):
            self.check_classes([class_names])
        else:
            class_names = list(class_names)
            self.check_classes(dict.fromkeys(class_names))
        batch_size = batch_size or self.batch_size
        pending: list[LoadedImage] = []
        # tiled: one image per step (its tiles make the batches), one decoded ahead
        per_step, lookahead = (1, 1) if self.tile is not None else (batch_size, 2 * batch_size)
        for prepared in self.load_images(inputs, class_names, lookahead=lookahead, roi=roi):
            if prepared.error is not None and on_error == "raise":
                raise ImageLoadError(prepared.source, prepared.error)
            pending.append(prepared)
            if sum(p.ready for p in pending) >= per_step:
                yield from self._run(pending, batch_size)
                pending = []
        if pending:
            yield from self._run(pending, batch_size)

    def load_images(
        self,
        inputs: Iterable[object],
        class_names: str | Sequence[str],
        lookahead: int = 16,
        roi: RoiInput | Sequence[RoiInput | None] | None = None,
    ) -> Iterator[LoadedImage]:
        """Inputs decoded and resized (tiled: decoded only) in a background thread,
        ``lookahead`` ahead of the network (PIL releases the GIL), yielded in input order;
        ``roi`` as in :meth:`iter_predict`."""
        names = _repeat_or_iterate(class_names, str)
        rois = _repeat_or_iterate(_as_one_roi(roi), np.ndarray)
        queue: deque[Future[LoadedImage]] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tipsomaly-load") as pool:
            for index, item in enumerate(inputs):
                class_name = next(names, None)
                if class_name is None:
                    raise ValueError(f"fewer class names than inputs (input {index})")
                item_roi = next(rois, _END)
                if item_roi is _END:
                    raise ValueError(f"fewer ROI masks than inputs (input {index})")
                queue.append(pool.submit(self._prepare, item, class_name, index, item_roi))
                if len(queue) > lookahead:
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()

    # -- tiles -----------------------------------------------------------------------------------
    def tiled_evidence(
        self,
        image: Any,
        boxes: Sequence,
        image_hw: tuple[int, int],
        score: Callable[[torch.Tensor], dict[str, DetectorOutput]],
        *,
        roi: np.ndarray | None = None,
        batch_size: int | None = None,
    ) -> dict[str, TiledEvidence]:
        """Score the ``boxes`` of an RGB PIL ``image`` in batches and blend their maps.

        ``score`` maps a batch of tiles (n, 3, S, S) to :class:`DetectorOutput` under one or
        more keys (predict: one; profile calibration: one per mode, from one forward); each
        key gets its :class:`TiledEvidence`. Nothing is kept on the predictor.

        Raises:
            NonFiniteError: a tile's scores or map are not finite.
        """
        batch_size = batch_size or self.batch_size
        mergers: dict[str, MapMerger] = {}
        g1: dict[str, float] = {}
        g2: dict[str, float] = {}
        for start in range(0, len(boxes), batch_size):
            chunk = list(boxes[start : start + batch_size])
            x = crop_tiles(image, chunk, self.image_size)
            for key, out in score(x).items():
                a1, a2 = out.global_cls1, out.global_cls2
                if not _finite(a1, a2, out.anomaly_map):
                    raise NonFiniteError(key)
                if key not in mergers:
                    mergers[key] = MapMerger(image_hw)
                mergers[key].add(out.anomaly_map, chunk)
                g1[key] = max(g1.get(key, 0.0), float(a1.max()))
                g2[key] = max(g2.get(key, 0.0), float(a2.max()))
        evidence = {}
        for key, merger in mergers.items():
            m = merger.result()
            if roi is not None:
                m.masked_fill_(~torch.from_numpy(roi), 0.0)
            evidence[key] = TiledEvidence(m, g1[key], g2[key], float(m.max()), len(boxes))
        return evidence

    def scored_boxes(self, item: LoadedImage) -> list:
        """The tiles of a decoded image that are scored: all, or those holding ROI pixels."""
        assert item.original_size is not None
        grid = self.tile_grid(item.original_size)
        assert grid is not None
        boxes = list(grid.boxes)
        if item.roi is not None:
            boxes = [boxes[i] for i in boxes_touching(item.roi, boxes)]
        return boxes

    # -- internals ---------------------------------------------------------------------------------
    def _prepare(self, item: object, class_name: str, index: int, roi: object) -> LoadedImage:
        tiled = self.tile is not None
        if isinstance(item, (str, os.PathLike)):
            source = str(item)
            try:
                image = load_image(item, max_pixels=self.config.max_pixels)
            except ImageLoadError as exc:
                return LoadedImage(source, class_name, error=exc.reason)
            loaded = LoadedImage(source, class_name, original_size=(image.height, image.width))
        else:
            source = f"<input {index}>"
            try:
                image = to_pil(item) if tiled else item  # type: ignore[arg-type]
                loaded = LoadedImage(source, class_name, original_size=_input_hw(item))
                if not tiled:
                    loaded.tensor = preprocess(item, self.image_size)  # type: ignore[arg-type]
            except (TypeError, ValueError) as exc:
                return LoadedImage(source, class_name, error=str(exc))
        if tiled:
            loaded.image = image
        elif loaded.tensor is None:
            loaded.tensor = preprocess(image, self.image_size)
        if roi is None:
            roi = self._roi
        if roi is not None:
            assert loaded.original_size is not None
            try:
                given = roi if isinstance(roi, np.ndarray) and roi.dtype == bool else as_roi(roi)
                mask, resized = fit_roi(given, loaded.original_size)
            except (ImageLoadError, ValueError) as exc:
                return LoadedImage(source, class_name, error=f"ROI mask: {exc}")
            if not mask.any():
                return LoadedImage(
                    source, class_name, error="its ROI mask has no white pixel: nothing to inspect"
                )
            if resized:
                (h0, w0), (h, w) = given.shape, loaded.original_size
                loaded.notes.append(f"ROI mask of {w0}x{h0} px resized to the image's {w}x{h}")
            loaded.roi = mask
        return loaded

    def _run(self, items: list[LoadedImage], batch_size: int) -> Iterator[Prediction]:
        ready = [i for i in items if i.tensor is not None]
        out: DetectorOutput | None = None
        if ready:
            images = torch.stack([i.tensor for i in ready])  # type: ignore[misc]
            out = self.score(images, [i.class_name for i in ready])
        k = 0
        for item in items:
            if item.error is not None:
                yield Prediction(item.source, item.class_name, error=item.error)
                continue
            if item.image is not None:
                yield self._predict_tiled(item, batch_size)
                continue
            assert out is not None and item.original_size is not None
            yield self._predict_one(item, out, k)
            k += 1

    def _predict_one(self, item: LoadedImage, out: DetectorOutput, k: int) -> Prediction:
        """Row ``k`` of a scored batch as the prediction of one untiled image."""
        if not _finite(out.score_cls1[k], out.score_cls2[k], out.anomaly_map[k]):
            logger.warning("%s: non-finite anomaly score or map", item.source)
            return Prediction(item.source, item.class_name, error=NON_FINITE)
        s1, s2, small, evidence = self.untiled_scores(out, k, item.roi)
        # Upsampled on the CPU from the small map: the one full-size copy is the float32 result
        # itself (never a full-size map on the accelerator, then copied back).
        original = resize_map(small, item.original_size, antialias=False)  # type: ignore[arg-type]
        if original is small:  # already at the image's size: two arrays all the same
            original = small.clone()
        if item.roi is not None:
            original.masked_fill_(~torch.from_numpy(item.roi), 0.0)
            inside, _ = fit_roi(item.roi, tuple(small.shape))  # type: ignore[arg-type]
            small = small.masked_fill(~torch.from_numpy(inside), 0.0)
        return self._prediction(item, s1, s2, small.numpy(), original.numpy(), evidence, None)

    def untiled_scores(
        self, out: DetectorOutput, k: int, roi: np.ndarray | None
    ) -> tuple[float, float, torch.Tensor, dict[str, float]]:
        """Row ``k`` of a scored batch with its image's ``roi`` (H, W) applied to the scores:
        (score_cls1, score_cls2, the (S, S) map on the CPU (not masked), the evidence)."""
        g1, g2 = out.global_cls1[k], out.global_cls2[k]
        patch = out.patch_evidence[k]
        small = out.anomaly_map[k].detach().float().cpu()
        if roi is not None:  # local evidence from the patch cells inside the ROI
            cells = torch.from_numpy(roi_cells(roi, self.grid)).to(patch.device)
            patch = patch[cells]
        local = patch.max()
        if roi is not None:
            s1, s2 = float(g1 + local), float(g2 + local)  # the engine's sum, in its dtype
        else:
            s1, s2 = float(out.score_cls1[k]), float(out.score_cls2[k])
        evidence = {"global_cls1": float(g1), "global_cls2": float(g2), "local": float(local)}
        return s1, s2, small, evidence

    def _predict_tiled(self, item: LoadedImage, batch_size: int) -> Prediction:
        """One decoded image scored tile by tile (see the module doc)."""
        boxes = self.scored_boxes(item)
        names = [item.class_name] * batch_size
        try:
            ev = self.tiled_evidence(
                item.image,
                boxes,
                item.original_size,  # type: ignore[arg-type]
                lambda x: {"": self.score(x, names[: x.shape[0]])},
                roi=item.roi,
                batch_size=batch_size,
            )[""]
        except NonFiniteError:
            logger.warning("%s: non-finite anomaly score or map", item.source)
            return Prediction(item.source, item.class_name, error=NON_FINITE)
        logger.debug("%s: %d tiles scored", item.source, len(boxes))
        small = resize_map(ev.anomaly_map, (self.image_size, self.image_size))
        evidence = {"global_cls1": ev.global_cls1, "global_cls2": ev.global_cls2, "local": ev.local}
        s1, s2 = ev.score("cls1"), ev.score("cls2")
        return self._prediction(
            item, s1, s2, small.numpy(), ev.anomaly_map.numpy(), evidence, ev.tiles
        )

    def _prediction(
        self,
        item: LoadedImage,
        score_cls1: float,
        score_cls2: float,
        small: np.ndarray,
        original: np.ndarray,
        evidence: dict[str, float],
        tiles: int | None,
    ) -> Prediction:
        """The prediction of a scored image: its decision and defect records added."""
        c = self.config
        mode, image_t, pixel_t, source = self.decision(item.class_name)
        pred = Prediction(
            source=item.source,
            class_name=item.class_name,
            image_score=score_cls1 if c.cls == "cls1" else score_cls2,
            score_cls1=score_cls1,
            score_cls2=score_cls2,
            anomaly_map=small,
            anomaly_map_original=original,
            original_size=item.original_size,
            mode=mode,
            threshold=image_t,
            pixel_threshold=pixel_t,
            threshold_source=source,
            evidence=evidence,
            tiles=tiles,
            roi=item.roi,
            notes=list(item.notes),
        )
        if pixel_t is not None:
            try:
                pred.defects = extract_defects(
                    original,
                    pixel_t,
                    roi=item.roi,
                    min_area=c.min_defect_area,
                    pixel_size_mm=c.pixel_size_mm,
                    rle=c.defects_format == "coco",
                )
            except MemoryError:
                return Prediction(
                    item.source, item.class_name, error="cannot find its defects: out of memory"
                )
        return pred


_END = object()


def _finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _as_one_roi(roi: object) -> object:
    """One mask for every input is read once, here; a list stays a list."""
    if roi is None or isinstance(roi, np.ndarray):
        return roi
    if isinstance(roi, (str, os.PathLike)) or hasattr(roi, "getpixel"):
        return as_roi(roi)  # type: ignore[arg-type]
    return roi


def _repeat_or_iterate(value: object, one: type) -> Iterator[Any]:
    """``value`` for every input (a single one, or None), or the items of a list."""
    if value is None or isinstance(value, one):
        while True:
            yield value
    yield from value  # type: ignore[misc]


def _input_hw(item: object) -> tuple[int, int]:
    """(H, W) of an in-memory input: a PIL image, a (C, H, W) tensor or an (H, W[, C]) array."""
    if hasattr(item, "size") and hasattr(item, "getpixel"):  # PIL image: size is (W, H)
        w, h = item.size  # type: ignore[attr-defined]
        return int(h), int(w)
    shape = tuple(item.shape)  # type: ignore[attr-defined]
    if isinstance(item, torch.Tensor) and len(shape) == 3:
        return int(shape[1]), int(shape[2])  # C, H, W
    return int(shape[0]), int(shape[1])  # H, W[, C]
