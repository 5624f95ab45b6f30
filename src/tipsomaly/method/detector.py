"""The TipsOmaly detector: images and class names in, image scores and anomaly maps out."""

from __future__ import annotations

import dataclasses
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from ..data.images import ImageInput, ImageLoadError, load_image, preprocess, to_pil
from ..data.roi import RoiInput, as_roi, boxes_touching, fit_roi, roi_cells
from ..tips.model import TipsModel, load_model
from ..tips.presets import DEFAULT_PRESET
from ..tips.vision import VisionFeatures
from ..validation import choice, in_range, multiple_of, positive_int
from .config import CLS_CHOICES, DEFAULT_MODE, MODES, DetectorConfig
from .head import BatchScores, DetectorOutput, TipsomalyHead
from .memory_bank import ReferenceDistances
from .pixel_prompts import PixelPrompts, load_pixel_prompts
from .profile import Profile, load_profiles
from .prompts import PromptSet, class_embeddings, learned_embeddings, load_prompts
from .text_cache import TextEmbeddingCache
from .tiling import (
    DEFAULT_OVERLAP,
    MapMerger,
    TileGrid,
    auto_tile_size,
    check_tile,
    crop_tiles,
    plan_tiles,
    resize_map,
)

logger = logging.getLogger(__name__)

_DEFAULTS = DetectorConfig()  # the one source of the defaults below
NON_FINITE = "non-finite anomaly score: check the model weights and prompts"


@dataclass
class Prediction:
    """The answer for one image.

    ``image_score`` is the score of the detector's chosen CLS token (higher = more anomalous,
    in [0, 2]); ``anomaly_map`` is (S, S) float32 at model resolution and
    ``anomaly_map_original`` (H, W) at the image's original size. When the image could not be
    read, or its score or map is not finite (:data:`NON_FINITE`), ``error`` says why and the
    numbers are NaN / the maps ``None``. With a profile of its class, ``mode`` says how it was
    scored and ``threshold`` / ``pixel_threshold`` are the profile's calibrated thresholds for
    that mode (None when the profile has none); :attr:`is_anomalous` is the decision.

    ``evidence`` splits the image score: ``global_cls1`` / ``global_cls2`` (the CLS tokens'
    abnormal evidence; tiled: the highest over the tiles scored) and ``local`` (the highest
    patch evidence; tiled: the stitched map's maximum; both only inside the ROI), so
    ``score_clsK = global_clsK + local``. ``tiles`` is the number of tiles scored (None
    untiled); ``roi`` the (H, W) bool ROI used (True = inspected), ``notes`` remarks such as a
    resized ROI mask.
    """

    source: str
    class_name: str
    image_score: float = float("nan")
    score_cls1: float = float("nan")
    score_cls2: float = float("nan")
    anomaly_map: np.ndarray | None = None
    anomaly_map_original: np.ndarray | None = None
    original_size: tuple[int, int] | None = None
    error: str | None = None
    mode: str = "zero-shot"
    threshold: float | None = None
    pixel_threshold: float | None = None
    evidence: dict[str, float] | None = None
    tiles: int | None = None
    roi: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def is_anomalous(self) -> bool | None:
        """``image_score >= threshold`` with a calibrated threshold (a profile), else None."""
        if self.threshold is None or not self.ok:
            return None
        return bool(self.image_score >= self.threshold)


@dataclass
class LoadedImage:
    """One input decoded and resized for the network (``tensor`` (3, S, S) in [0, 1]), or,
    for a tiling detector, decoded only (``image``, RGB: tiles are cut as they are scored);
    or the reason it could not be (``error``). ``roi``: (H, W) bool at the image's size."""

    source: str
    class_name: str
    tensor: torch.Tensor | None = None
    original_size: tuple[int, int] | None = None
    error: str | None = None
    extras: dict = field(default_factory=dict)
    image: object | None = None  # PIL.Image.Image (tiled)
    roi: np.ndarray | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        """Decoded and waiting for the network."""
        return self.error is None and (self.tensor is not None or self.image is not None)


class TiledEvidence(NamedTuple):
    """What the tiles of one image add up to (see :meth:`Detector.tiled_evidence`).

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


class _NonFinite(Exception):
    """A tile's score or map is not finite."""


class Detector:
    """Zero-shot anomaly detection with TipsOmaly's decoupled prompts.

    Args:
        model: a TIPS preset name (default ``"l14h"``, the paper's backbone), a model directory,
            or a loaded :class:`~tipsomaly.tips.TipsModel`.
        prompt_type: the fixed prompt ensemble: ``"industrial"``, ``"medical"`` or
            ``"object_agnostic"`` (or a name in ``prompt_file``).
        prompt_file: optional JSON file of prompt ensembles in the schema of the built-in ones.
        pixel_prompts: learned pixel prompts — a bundled name (``"trained-on-mvtec"``,
            ``"trained-on-visa"``), a ``.safetensors`` / ``.pth`` file, or
            :class:`PixelPrompts`. Without them the fixed prompts also score the patches.
        image_size: side S of the square model input, a multiple of 14 (paper: 518).
        sigma: Gaussian smoothing of the maps, in model-resolution pixels (paper: 4).
        cls: which CLS token gives ``image_score``: ``"cls1"`` (alt-text) or ``"cls2"``
            (dense captions). Both scores are always reported.
        device, dtype: where and in which precision the backbone runs.
        batch_size: images per forward pass in :meth:`predict`.
        text_cache: keep text embeddings on disk (``<cache>/text``) so that the next run with
            the same model and prompts skips the text tower; ``False`` computes them per run.
        profile: few-shot profiles (:class:`~tipsomaly.method.profile.Profile` or folders
            written by ``tipsomaly fit``), one per class: images of a class with a profile are
            scored against its normal references in ``mode`` and get its calibrated
            thresholds. Each profile must come from this detector's setup (checked).
        mode: ``"zero-shot"``, ``"few-shot"`` or ``"fused"``; default ``"fused"`` with
            profiles, ``"zero-shot"`` without.
        tile: tiled inference at native resolution (:mod:`tipsomaly.method.tiling`): the side
            of a tile in original pixels, ``"auto"`` (per image:
            :func:`~tipsomaly.method.tiling.auto_tile_size`) or None (the whole image resized
            to the input, the paper's way).
        tile_overlap: the least fraction of a tile that neighbouring tiles share.

    Tiled, each tile is scored as an image, the tiles' maps are blended (a Hann window, no
    seams) into one map at the original size, and an image's score is ``max over its tiles of
    the CLS token's abnormal evidence + max of the blended map`` (in [0, 2]); this holds for
    an image that fits in one tile too, so that every image of a tiled run is scored alike.
    A few-shot profile fitted with tiles holds its references' tile patches and is used with
    the same tiling (checked).

    Regions of interest (``roi=`` of :meth:`predict`; white = inspected): the map is 0
    outside the ROI and the image score takes only ROI evidence. Untiled, its local term is
    the highest patch evidence over the patch cells at least half inside the ROI (the paper's
    max over patches, restricted); tiled, tiles that hold no ROI pixel are not scored at all,
    the global term is the highest over the tiles scored and the local term the blended map's
    maximum inside the ROI. The untiled global term (the CLS token of the whole image) cannot
    be restricted and is unchanged. An all-white ROI gives the scores and maps of no ROI.

    Raises:
        InvalidOptionError: a setting out of range (named), before the model loads.

    Example:
        >>> det = Detector("b14h", tile="auto")  # doctest: +SKIP
        >>> [p] = det.predict("board.png", "circuit board", roi="board-roi.png")
        >>> p.image_score, p.anomaly_map_original.shape  # (0.93, (3000, 4000))
    """

    def __init__(
        self,
        model: str | os.PathLike | TipsModel = DEFAULT_PRESET,
        *,
        prompt_type: str = _DEFAULTS.prompt_type,
        prompt_file: str | os.PathLike | None = None,
        pixel_prompts: str | os.PathLike | PixelPrompts | None = None,
        image_size: int = _DEFAULTS.image_size,
        sigma: float = _DEFAULTS.sigma,
        cls: str = _DEFAULTS.cls,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        batch_size: int = _DEFAULTS.batch_size,
        offline: bool | None = None,
        text_cache: bool | TextEmbeddingCache = True,
        profile: str | os.PathLike | Profile | Sequence[str | os.PathLike | Profile] | None = None,
        mode: str | None = None,
        tile: int | str | None = None,
        tile_overlap: float = DEFAULT_OVERLAP,
    ) -> None:
        choice(cls, "cls", CLS_CHOICES)  # InvalidOptionError (a ValueError), before loading
        in_range(sigma, "sigma", 0)
        positive_int(batch_size, "batch_size")
        tile = check_tile(tile, tile_overlap)
        if isinstance(model, TipsModel):
            self.model = model.to(device=device).set_compute_dtype(dtype)
        else:
            self.model = load_model(model, device=device, dtype=dtype, offline=offline)
        multiple_of(image_size, "image_size", self.model.patch_size, what="the patch size")
        self.prompts: PromptSet = load_prompts(prompt_type, prompt_file)
        # how to build this detector again (a profile records it for `predict --profile`)
        self.spec: dict[str, object] = {
            "model": None if isinstance(model, TipsModel) else _findable(model),
            "image_size": int(image_size),
            "prompt_type": prompt_type,
            "prompt_file": _findable(prompt_file),
            "pixel_prompts": "none"
            if pixel_prompts is None
            else None
            if isinstance(pixel_prompts, PixelPrompts)
            else _findable(pixel_prompts),
            "sigma": float(sigma),
            "cls": cls,
            "tile": tile,
            "tile_overlap": float(tile_overlap),
        }
        #: tiling setting (None: untiled); see :meth:`tile_grid`
        self.tile: int | str | None = tile
        self.tile_overlap = float(tile_overlap)
        self.image_size = int(image_size)
        self.sigma = float(sigma)
        self.cls = cls
        self.batch_size = int(batch_size)
        self.pixel_prompts: PixelPrompts | None = None
        if pixel_prompts is not None:
            self.pixel_prompts = load_pixel_prompts(pixel_prompts)
            self.pixel_prompts.check_width(self.model.embed_dim, self.model.name)
        else:
            logger.info(
                "no learned pixel prompts given: the fixed %r prompts score the patches too "
                "(maps are coarser; see --pixel-prompts)",
                self.prompts.name,
            )
        self._fixed: dict[str, torch.Tensor] = {}
        self._learned: torch.Tensor | None = None
        self._head: TipsomalyHead | None = None
        if text_cache is True:
            text_cache = TextEmbeddingCache()
        self.text_cache: TextEmbeddingCache | None = text_cache or None
        self.profiles: dict[str, Profile] = {}
        self.mode = "zero-shot"
        self.set_profiles(profile, mode)

    def set_profiles(
        self,
        profile: str | os.PathLike | Profile | Sequence[str | os.PathLike | Profile] | None,
        mode: str | None = None,
    ) -> None:
        """Use these profiles (by class name) in ``mode`` from now on; ``None``: none.

        Raises:
            ProfileError: a profile cannot be read, or two are of one class.
            ProfileMismatchError: a profile was fitted with another setup (named).
        """
        if mode is not None:
            choice(mode, "mode", MODES)
        if profile is None:
            specs: list = []
        elif isinstance(profile, (str, os.PathLike, Profile)):
            specs = [profile]
        else:
            specs = list(profile)
        profiles = load_profiles(specs, self.device)
        for p in profiles.values():
            p.check_compatible(self)
            p.bank.to(self.device)
        self.profiles = profiles
        self.mode = mode or (DEFAULT_MODE if profiles else "zero-shot")

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def grid(self) -> tuple[int, int]:
        g = self.image_size // self.model.patch_size
        return (g, g)

    @property
    def tiling(self) -> dict[str, object] | None:
        """``{"tile", "overlap"}`` as set, or None untiled (what profiles record)."""
        if self.tile is None:
            return None
        return {"tile": self.tile, "overlap": self.tile_overlap}

    def tile_grid(self, image_hw: tuple[int, int]) -> TileGrid | None:
        """The tiles of an (H, W) image under this detector's setting (None: untiled)."""
        if self.tile is None:
            return None
        side = (
            auto_tile_size(image_hw, self.image_size, self.tile_overlap)
            if self.tile == "auto"
            else int(self.tile)
        )
        return plan_tiles(image_hw, side, self.tile_overlap)

    # -- text side ------------------------------------------------------------------------
    @torch.no_grad()
    def class_text(self, class_name: str) -> torch.Tensor:
        """(2, D) fixed-prompt embeddings [normal, abnormal] of a class, cached for the run
        (and on disk, see ``text_cache``)."""
        if class_name not in self._fixed:
            self._fixed[class_name] = self._cached_text(
                lambda: class_embeddings(self.model, self.prompts, class_name),
                kind="fixed",
                class_name=class_name,
            )
        return self._fixed[class_name]

    @torch.no_grad()
    def pixel_text(self) -> torch.Tensor | None:
        """(2, D) learned pixel-prompt embeddings, or None without learned prompts."""
        if self.pixel_prompts is None:
            return None
        if self._learned is None:
            preambles = self.pixel_prompts.preambles.to(self.device)
            self._learned = self._cached_text(
                lambda: learned_embeddings(self.model, self.prompts, preambles),
                kind="learned",
                preambles=self.pixel_prompts.preambles,
            )
        return self._learned

    def _cached_text(self, compute, **what: object) -> torch.Tensor:
        cache, fingerprint = self.text_cache, self.model.fingerprint
        if cache is None or fingerprint is None:
            return compute()
        key = cache.key(
            model=fingerprint,
            prompts=dataclasses.asdict(self.prompts),
            **what,
        )
        hit = cache.get(key, shape=(2, self.model.embed_dim))
        if hit is not None:
            return hit.to(self.device)
        embeddings = compute()
        cache.put(key, embeddings)
        return embeddings

    # -- the method as a module -------------------------------------------------------------
    @property
    def head(self) -> TipsomalyHead:
        """The method as one ``nn.Module`` (:class:`~tipsomaly.method.head.TipsomalyHead`),
        sharing this detector's vision tower; its text buffers hold the classes of the last
        batch scored (see :meth:`head_for`)."""
        if self._head is None:
            empty = torch.empty(0, 2, self.model.embed_dim, device=self.device)
            self._head = TipsomalyHead(self.model, empty, sigma=self.sigma, cls=self.cls)
        return self._head

    @torch.no_grad()
    def head_for(self, class_names: Sequence[str]) -> tuple[TipsomalyHead, torch.Tensor]:
        """B class names → the head with its text buffers set for them, and (B,) class indices.

        ``class_text`` (C, 2, D) holds the C distinct names in order of first appearance (from
        the text cache); ``pixel_text`` the learned prompts' embeddings, if any.
        """
        rows: dict[str, int] = {}
        index = [rows.setdefault(c, len(rows)) for c in class_names]
        head = self.head
        head.set_text(torch.stack([self.class_text(c) for c in rows]), self.pixel_text())
        return head, torch.tensor(index, dtype=torch.long, device=self.device)

    # -- image side -----------------------------------------------------------------------
    def score_features(
        self,
        features: VisionFeatures,
        class_names: Sequence[str],
        pixel_text: torch.Tensor | None = None,
    ) -> BatchScores:
        """Scores and maps from already computed vision features (B images, B class names).

        ``pixel_text`` (2, D) overrides the learned prompts' embeddings (used in training).
        Images of a class with a profile are scored in :attr:`mode` against its references.
        """
        head, index = self.head_for(class_names)
        class_text = head.select_class_text(index, len(class_names))  # (B, 2, D)
        size = (self.image_size, self.image_size)
        scores = head.score_features(features, class_text, size, pixel_text)
        if self.mode == "zero-shot" or not self.profiles:
            return scores
        rows = [i for i, c in enumerate(class_names) if c in self.profiles]
        if not rows:
            return scores
        distances = reference_distances(features, class_names, self.profiles)
        if len(rows) == len(class_names):
            return head.fuse(scores, distances, size, self.mode)
        # some images have no profile: zero-shot for them, fused for the others
        pick = torch.tensor(rows, device=features.patches.device)
        part = head.fuse(
            _rows(scores, pick), ReferenceDistances(*(d[pick] for d in distances)), size, self.mode
        )
        merged = {}
        for name in BatchScores.__dataclass_fields__:
            whole = getattr(scores, name).clone()
            whole[pick] = getattr(part, name).to(whole.dtype)
            merged[name] = whole
        return BatchScores(**merged)

    @torch.no_grad()
    def score_batch(self, images: torch.Tensor, class_names: str | Sequence[str]) -> BatchScores:
        """(B, 3, S, S) preprocessed images in [0, 1] → :class:`BatchScores`."""
        if isinstance(class_names, str):
            class_names = [class_names] * images.shape[0]
        if len(class_names) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(class_names)} class names")
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"images must be {self.image_size}×{self.image_size}, got {tuple(images.shape)}"
            )
        features = self.model.encode_image(images.to(self.device))
        return self.score_features(features, class_names)

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
        True = inspected), or a list with one per input (None: the whole image); see the
        class doc. A mask of another size than its image is resized (noted in ``notes``).
        A tiling detector scores one image at a time, its tiles in batches of ``batch_size``.

        Raises:
            ImageLoadError: with ``on_error="raise"``, an unreadable image or ROI mask.
        """
        if on_error not in ("raise", "record"):
            raise ValueError(f"on_error must be 'raise' or 'record', got {on_error!r}")
        batch_size = batch_size or self.batch_size
        tiled = self.tile is not None
        pending: list[LoadedImage] = []
        # tiled: one image per step (its tiles make the batches), one decoded ahead
        per_step, lookahead = (1, 1) if tiled else (batch_size, 2 * batch_size)
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
        names = _class_name_iter(class_names)
        rois = _roi_iter(roi)
        queue: deque[Future[LoadedImage]] = deque()
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="tipsomaly-load") as pool:
            for index, item in enumerate(inputs):
                try:
                    class_name = next(names)
                except StopIteration:
                    raise ValueError(f"fewer class names than inputs (input {index})") from None
                try:
                    item_roi = next(rois)
                except StopIteration:
                    raise ValueError(f"fewer ROI masks than inputs (input {index})") from None
                queue.append(pool.submit(self._prepare, item, class_name, index, item_roi))
                if len(queue) > lookahead:
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()

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
        return list(
            self.iter_predict(
                inputs, class_names, batch_size=batch_size, on_error=on_error, roi=roi
            )
        )

    # -- tiles ------------------------------------------------------------------------------
    def tiled_evidence(
        self,
        image: object,
        boxes: Sequence,
        image_hw: tuple[int, int],
        score: Callable[[torch.Tensor], dict[str, BatchScores]],
        *,
        roi: np.ndarray | None = None,
        batch_size: int | None = None,
    ) -> dict[str, TiledEvidence]:
        """Score the ``boxes`` of an RGB PIL ``image`` in batches and blend their maps.

        ``score`` maps a batch of tiles (n, 3, S, S) to :class:`BatchScores` under one or
        more keys (predict: one; profile calibration: one per mode, from one forward); each
        key gets its :class:`TiledEvidence`. Nothing is kept on the detector.

        Raises:
            _NonFinite: a tile's scores or map are not finite.
        """
        batch_size = batch_size or self.batch_size
        mergers: dict[str, MapMerger] = {}
        g1: dict[str, float] = {}
        g2: dict[str, float] = {}
        for start in range(0, len(boxes), batch_size):
            chunk = list(boxes[start : start + batch_size])
            x = crop_tiles(image, chunk, self.image_size)  # type: ignore[arg-type]
            for key, s in score(x).items():
                a1, a2 = s.global_probs_cls1[:, 1], s.global_probs_cls2[:, 1]
                if not _finite(a1, a2, s.maps):
                    raise _NonFinite(key)
                if key not in mergers:
                    mergers[key] = MapMerger(image_hw)
                mergers[key].add(s.maps, chunk)
                g1[key] = max(g1.get(key, 0.0), float(a1.max()))
                g2[key] = max(g2.get(key, 0.0), float(a2.max()))
        out = {}
        for key, merger in mergers.items():
            m = merger.result()
            if roi is not None:
                m.masked_fill_(~torch.from_numpy(roi), 0.0)
            out[key] = TiledEvidence(m, g1[key], g2[key], float(m.max()), len(boxes))
        return out

    # -- internals ------------------------------------------------------------------------
    def _prepare(
        self, item: object, class_name: str, index: int, roi: object = None
    ) -> LoadedImage:
        tiled = self.tile is not None
        if isinstance(item, (str, os.PathLike)):
            source = str(item)
            try:
                image = load_image(item)
            except ImageLoadError as exc:
                return LoadedImage(source, class_name, error=exc.reason)
            hw = (image.height, image.width)
            loaded = LoadedImage(source, class_name, original_size=hw)
            if tiled:
                loaded.image = image
            else:
                loaded.tensor = preprocess(image, self.image_size)
        else:
            source = f"<input {index}>"
            try:
                if tiled:
                    image = to_pil(item)  # type: ignore[arg-type]
                    loaded = LoadedImage(source, class_name, original_size=_input_hw(item))
                    loaded.image = image
                else:
                    tensor = preprocess(item, self.image_size)  # type: ignore[arg-type]
                    loaded = LoadedImage(
                        source, class_name, tensor=tensor, original_size=_input_hw(item)
                    )
            except (TypeError, ValueError) as exc:
                return LoadedImage(source, class_name, error=str(exc))
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

    def _run(self, items: list[LoadedImage], batch_size: int | None = None) -> Iterator[Prediction]:
        ready = [i for i in items if i.tensor is not None]
        scores: BatchScores | None = None
        out: DetectorOutput | None = None
        if ready:
            # score_batch is the head's forward in parts (features, then the text buffers):
            # tests and tools hook it to stand in for the network.
            images = torch.stack([i.tensor for i in ready])
            scores = self.score_batch(images, [i.class_name for i in ready])
            out = self.head.output(scores)
        k = 0
        for item in items:
            if item.error is not None:
                yield Prediction(item.source, item.class_name, error=item.error)
                continue
            if item.image is not None:
                yield self._predict_tiled(item, batch_size)
                continue
            assert out is not None and scores is not None and item.original_size is not None
            m = out.anomaly_map[k]
            if not _finite(out.score_cls1[k], out.score_cls2[k], m):
                logger.warning("%s: non-finite anomaly score or map", item.source)
                yield Prediction(item.source, item.class_name, error=NON_FINITE)
                k += 1
                continue
            g1, g2 = scores.global_probs_cls1[k, 1], scores.global_probs_cls2[k, 1]
            patch = scores.patch_probs[k, :, 1]
            if item.roi is not None:  # local evidence from the patch cells inside the ROI
                cells = torch.from_numpy(roi_cells(item.roi, self.grid)).to(patch.device)
                patch = patch[cells]
            local = patch.max()
            # Upsampled on the CPU from the small map: the one full-size copy is the float32
            # result itself (never a full-size map on the accelerator, then copied back).
            original = F.interpolate(
                m.detach().float().cpu()[None, None],
                size=item.original_size,
                mode="bilinear",
                align_corners=False,
            )[0, 0]
            small = m.detach().float().cpu()
            if item.roi is not None:
                original.masked_fill_(~torch.from_numpy(item.roi), 0.0)
                inside, _ = fit_roi(item.roi, tuple(small.shape))  # type: ignore[arg-type]
                small = small.masked_fill(~torch.from_numpy(inside), 0.0)
                s1, s2 = float(g1 + local), float(g2 + local)  # the head's sum, in its dtype
            else:
                s1, s2 = float(out.score_cls1[k]), float(out.score_cls2[k])
            evidence = {"global_cls1": float(g1), "global_cls2": float(g2), "local": float(local)}
            yield self._prediction(
                item, s1, s2, small.numpy(), original.numpy(), evidence, tiles=None
            )
            k += 1

    def _predict_tiled(self, item: LoadedImage, batch_size: int | None) -> Prediction:
        """One decoded image scored tile by tile (see the class doc)."""
        assert item.original_size is not None
        grid = self.tile_grid(item.original_size)
        assert grid is not None
        boxes = list(grid.boxes)
        if item.roi is not None:  # tiles without an inspected pixel are not scored
            boxes = [boxes[i] for i in boxes_touching(item.roi, boxes)]
        name = item.class_name
        try:
            ev = self.tiled_evidence(
                item.image,
                boxes,
                item.original_size,
                lambda x: {"": self.score_batch(x, name)},
                roi=item.roi,
                batch_size=batch_size,
            )[""]
        except _NonFinite:
            logger.warning("%s: non-finite anomaly score or map", item.source)
            return Prediction(item.source, name, error=NON_FINITE)
        logger.debug(
            "%s: %d of %d tiles of %d px scored", item.source, len(boxes), len(grid), grid.tile
        )
        small = resize_map(ev.anomaly_map, (self.image_size, self.image_size))
        return self._prediction(
            item,
            ev.score("cls1"),
            ev.score("cls2"),
            small.numpy(),
            ev.anomaly_map.numpy(),
            {"global_cls1": ev.global_cls1, "global_cls2": ev.global_cls2, "local": ev.local},
            tiles=ev.tiles,
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
        profile = self.profiles.get(item.class_name)
        mode = self.mode if profile is not None else "zero-shot"
        return Prediction(
            source=item.source,
            class_name=item.class_name,
            image_score=score_cls1 if self.cls == "cls1" else score_cls2,
            score_cls1=score_cls1,
            score_cls2=score_cls2,
            anomaly_map=small,
            anomaly_map_original=original,
            original_size=item.original_size,
            mode=mode,
            threshold=_calibrated(profile, mode, "image"),
            pixel_threshold=_calibrated(profile, mode, "pixel"),
            evidence=evidence,
            tiles=tiles,
            roi=item.roi,
            notes=list(item.notes),
        )


def _findable(spec: str | os.PathLike | None) -> str | None:
    """A model / prompt spec that names an existing file or folder, made absolute."""
    if spec is None:
        return None
    return os.path.abspath(spec) if os.path.exists(spec) else str(spec)


def reference_distances(
    features: VisionFeatures, class_names: Sequence[str], profiles: dict[str, Profile]
) -> ReferenceDistances:
    """Each image's distances to its class's references (B images; a class without a
    profile gets zeros, to be ignored by the caller)."""
    b, n = features.patches.shape[:2]
    device = features.patches.device
    cls1 = torch.zeros(b, device=device)
    cls2 = torch.zeros(b, device=device)
    patches = torch.zeros(b, n, device=device)
    for name in dict.fromkeys(class_names):
        profile = profiles.get(name)
        if profile is None:
            continue
        pick = torch.tensor([i for i, c in enumerate(class_names) if c == name], device=device)
        sub = VisionFeatures(*(t.index_select(0, pick) for t in features))
        d = profile.bank(sub)
        cls1[pick], cls2[pick], patches[pick] = d.cls1, d.cls2, d.patches
    return ReferenceDistances(cls1, cls2, patches)


def _rows(scores: BatchScores, pick: torch.Tensor) -> BatchScores:
    return BatchScores(**{k: getattr(scores, k)[pick] for k in BatchScores.__dataclass_fields__})


def _calibrated(profile: Profile | None, mode: str, kind: str) -> float | None:
    if profile is None:
        return None
    calib = profile.thresholds.get(mode, {}).get(kind)
    return None if calib is None else calib.threshold


def _finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _roi_iter(roi: object) -> Iterator[object]:
    """Per input: None, or its ROI (one mask for all is read once, here)."""
    if roi is None or isinstance(roi, (str, os.PathLike, np.ndarray)) or hasattr(roi, "getpixel"):
        mask = None if roi is None else as_roi(roi)  # type: ignore[arg-type]
        while True:
            yield mask
    yield from roi  # type: ignore[misc]


def _class_name_iter(class_names: str | Sequence[str]) -> Iterator[str]:
    if isinstance(class_names, str):
        while True:
            yield class_names
    yield from class_names


def _input_hw(item: object) -> tuple[int, int]:
    if hasattr(item, "size") and hasattr(item, "getpixel"):  # PIL image: size is (W, H)
        w, h = item.size  # type: ignore[attr-defined]
        return int(h), int(w)
    shape = tuple(item.shape)  # type: ignore[attr-defined]
    if isinstance(item, torch.Tensor) and len(shape) == 3:
        return int(shape[1]), int(shape[2])  # C, H, W
    return int(shape[0]), int(shape[1])  # H, W[, C]


__all__ = ["BatchScores", "Detector", "LoadedImage", "Prediction", "TiledEvidence"]
