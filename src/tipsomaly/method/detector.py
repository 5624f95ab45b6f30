"""The PyTorch engine of the pipeline: :class:`Detector`, TIPS and TipsOmaly's head in torch.

A :class:`Detector` loads the model, the prompts and the profiles of its
:class:`~.config.DetectorConfig`, computes (and caches) the text embeddings, and scores batches
of model inputs with :class:`~.head.TipsomalyHead`; everything between files and scores
(decoding, ROI, tiles, decisions, defect records) is the pipeline's
(:class:`~.pipeline.Predictor`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..fingerprint import prompts_digest, tensor_digest, tensors_digest
from ..identity import SCORING_KEYS, Identity, diff
from ..tips.model import TipsModel, load_model
from ..tips.runtime import resolve_device, resolve_dtype
from ..tips.vision import VisionFeatures
from ..validation import multiple_of, tile_side
from .config import DetectorConfig
from .decision import Thresholds
from .head import BatchScores, DetectorOutput, TipsomalyHead
from .memory_bank import ReferenceDistances
from .pipeline import Predictor
from .pixel_prompts import PixelPrompts, load_pixel_prompts
from .prediction import NON_FINITE, Prediction
from .profile import Profile, ProfileMismatchError, load_profiles
from .prompts import PromptSet, class_embeddings, learned_embeddings, load_prompts
from .text_cache import TextEmbeddingCache

logger = logging.getLogger(__name__)

__all__ = ["NON_FINITE", "BatchScores", "Detector", "Prediction", "reference_distances"]

_DTYPE_NAMES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


class Detector(Predictor):
    """Zero-shot (and few-shot) anomaly detection with TipsOmaly's decoupled prompts, in PyTorch.

    Args:
        model: a TIPS preset name (default ``"l14h"``, the paper's backbone), a model directory,
            or a loaded :class:`~tipsomaly.tips.TipsModel`.
        text_cache: keep text embeddings on disk (``<cache>/text``) so that the next run with
            the same model and prompts skips the text tower; ``False`` computes them per run.
        **settings: any :class:`~.config.DetectorConfig` field, with its default when left
            out; also objects: a :class:`PixelPrompts`, :class:`Profile` s (``profile=`` also
            accepted), a torch device and dtype.

    See :mod:`~.pipeline` for what tiles and regions of interest do to the scores. A profile is
    used only with the setup that fitted it (checked: model, size, prompts, sigma, CLS token,
    tiling, ROI).

    Raises:
        InvalidOptionError: a setting out of range (named), before the model loads.
        ProfileMismatchError: a profile fitted with another setup (every difference named).

    Example:
        >>> det = Detector("b14h", tile="auto")  # doctest: +SKIP
        >>> [p] = det.predict("board.png", "circuit board", roi="board-roi.png")
        >>> p.image_score, p.anomaly_map_original.shape  # (0.93, (3000, 4000))
    """

    def __init__(
        self,
        model: str | os.PathLike | TipsModel = DetectorConfig.model,  # type: ignore[assignment]
        *,
        text_cache: bool | TextEmbeddingCache = True,
        **settings: Any,
    ) -> None:
        if "profile" in settings:  # the singular, as the CLI option reads
            settings.setdefault("profiles", settings.pop("profile"))
        if settings.get("profiles") is None:
            settings["profiles"] = ()
        loaded = model if isinstance(model, TipsModel) else None
        config = DetectorConfig(model=model, **settings).for_dataset()
        super().__init__(config)  # reads the ROI: a bad mask is refused before the model loads
        device = resolve_device(config.device)
        dtype = resolve_dtype(config.dtype, device)
        if loaded is not None:
            self.model = loaded.to(device=device).set_compute_dtype(dtype)
        else:
            self.model = load_model(model, device=device, dtype=dtype, offline=config.offline)
        self.patch_size = self.model.patch_size
        multiple_of(config.image_size, "image_size", self.patch_size, what="the patch size")
        tile_side(config.tile, "tile", at_least=self.patch_size, what="the patch size")
        self.prompts: PromptSet = load_prompts(config.prompt_type, config.prompt_file)
        self.pixel_prompts: PixelPrompts | None = None
        if config.pixel_prompts is not None:
            self.pixel_prompts = load_pixel_prompts(config.pixel_prompts)
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
        self._identity: Identity | None = None
        if text_cache is True:
            text_cache = TextEmbeddingCache()
        self.text_cache: TextEmbeddingCache | None = text_cache or None
        self.profiles: dict[str, Profile] = {}
        self.set_profiles(config.profiles, config.mode)

    @classmethod
    def from_config(
        cls,
        config: DetectorConfig,
        *,
        model: TipsModel | None = None,
        text_cache: bool | TextEmbeddingCache = True,
    ) -> Detector:
        """The detector of ``config`` (every field); ``model``: an already loaded model to use
        instead of loading ``config.model`` again."""
        settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(DetectorConfig)}
        spec = settings.pop("model")
        return cls(model if model is not None else spec, text_cache=text_cache, **settings)

    def set_profiles(self, profile: Any, mode: str | None = None) -> None:
        """Use these profiles (by class name) in ``mode`` from now on; ``None``: none.

        Raises:
            ProfileError: a profile cannot be read, or two are of one class.
            ProfileMismatchError: a profile was fitted with another setup (named).
        """
        if profile is None:
            specs: list = []
        elif isinstance(profile, (str, os.PathLike, Profile)):
            specs = [profile]
        else:
            specs = list(profile)
        profiles = load_profiles(specs, self.device)
        mine = self.identity.scoring()
        for p in profiles.values():
            problems = diff(p.identity, mine, profile_keys(p.identity))
            if problems:
                raise ProfileMismatchError(
                    f"{p.name} was fitted with another setup: {'; '.join(problems)}. Use the "
                    "profile's settings or fit a new profile"
                )
            p.bank.to(self.device)
        self.config = self.config.replace(profiles=tuple(profiles.values()), mode=mode)
        self.profiles = profiles

    # -- what the pipeline asks of an engine --------------------------------------------------
    @property
    def identity(self) -> Identity:
        if self._identity is None:
            model, pixel, c = self.model, self.pixel_prompts, self.config
            self._identity = Identity(
                model={
                    "name": model.name,
                    "fingerprint": model.fingerprint or tensors_digest(model.state_dict()),
                },
                image_size=c.image_size,
                prompts={"name": self.prompts.name, "digest": prompts_digest(self.prompts)},
                pixel_prompts=None
                if pixel is None
                else {
                    "source": pixel.metadata.get("source", "given"),
                    "digest": tensor_digest(pixel.preambles),
                },
                sigma=c.sigma,
                cls=c.cls,
                tiling=c.tiling,
                roi=None if self._roi is None else roi_digest(self._roi),
                engine="torch",
                precision=_DTYPE_NAMES.get(model.compute_dtype, str(model.compute_dtype)),
            )
        return self._identity

    def thresholds_for(self, class_name: str) -> Thresholds | None:
        profile = self.profiles.get(class_name)
        return None if profile is None else profile.thresholds

    def warm_up(self, class_names: Sequence[str] = ()) -> None:
        for name in class_names:
            self.class_text(name)  # the text tower now, not in the first request's batch
        size = self.image_size
        with torch.no_grad():
            self.model.encode_image(torch.zeros(1, 3, size, size, device=self.device))

    def profile_names(self) -> dict[str, str]:
        return {name: p.name for name, p in self.profiles.items()}

    def score(self, images: torch.Tensor, class_names: Sequence[str]) -> DetectorOutput:
        # score_batch is the head's forward in parts (features, then the text buffers): tests
        # and tools hook it to stand in for the network.
        return self.head.output(self.score_batch(images, class_names))

    @property
    def device(self) -> torch.device:
        return self.model.device

    # -- text side -------------------------------------------------------------------------------
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
        key = cache.key(model=fingerprint, prompts=dataclasses.asdict(self.prompts), **what)
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

    # -- image side ---------------------------------------------------------------------------
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


def profile_keys(fitted: dict[str, Any]) -> list[str]:
    """The identity entries a detector must share with a profile it uses: every scoring entry;
    the ROI only when the profile was fitted with one (a profile fitted on whole images may be
    used with a region of interest: its scores only shrink, so its false-alarm rate holds)."""
    return [k for k in SCORING_KEYS if k != "roi" or fitted.get("roi") is not None]


def roi_digest(mask: np.ndarray) -> str:
    """The id of an ROI mask: its shape and pixels."""
    sha = hashlib.sha256(f"{mask.shape}".encode())
    sha.update(np.packbits(mask.astype(bool)).tobytes())
    return sha.hexdigest()


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
