"""The TipsOmaly method as one ``nn.Module``: images in, image scores and anomaly maps out.

:class:`TipsomalyHead` is the part of the method an export (ONNX, OpenVINO) or a service needs:
the frozen vision tower plus the text embeddings, the temperature (and later a memory bank and
thresholds) as buffers, and a pure ``forward`` — no file I/O, no caches of its own, no Python
state written. Loading weights, computing and caching text embeddings, decoding files and
turning outputs into per-image results stay in :class:`~tipsomaly.method.detector.Detector`,
the I/O facade that fills the head's buffers (anomalib's torch model / inferencer split).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..tips.model import TipsModel
from ..tips.vision import VisionFeatures
from .config import CLS_CHOICES
from .maps import anomaly_maps
from .memory_bank import ReferenceBank, ReferenceDistances
from .names import MODES
from .scoring import few_shot_anomaly, fuse_evidence, image_scores, state_probabilities


class DetectorOutput(NamedTuple):
    """What :meth:`TipsomalyHead.forward` returns for B images of side S.

    ``image_score`` (B,) is the score of the head's chosen CLS token, ``score_cls1`` and
    ``score_cls2`` (B,) both CLS tokens' scores (each in [0, 2]: abnormal global probability +
    highest abnormal patch probability); ``anomaly_map`` (B, S, S) fp32 in [0, 1], smoothed.
    The evidence they are made of: ``global_cls1``, ``global_cls2`` (B,) the CLS tokens'
    abnormal evidence and ``patch_evidence`` (B, N) each patch's, so that
    ``score_clsK = global_clsK + max(patch_evidence)``; the pipeline takes a region of
    interest's share of the patches, or the tiles' CLS evidence, from them.

    An export's graph has these outputs in this order, and with thresholds ``pred_label`` (B,)
    and ``pred_mask`` (B, S, S) bool after them (anomalib's ``InferenceBatch``).
    """

    image_score: torch.Tensor
    score_cls1: torch.Tensor
    score_cls2: torch.Tensor
    anomaly_map: torch.Tensor
    global_cls1: torch.Tensor
    global_cls2: torch.Tensor
    patch_evidence: torch.Tensor


@dataclass
class BatchScores:
    """Everything the method computes for a batch of B images at model resolution S.

    ``global_probs_cls*`` (B, 2) and ``patch_probs`` (B, N, 2) are [normal, abnormal]
    probabilities; ``score_cls*`` (B,) image scores; ``maps`` (B, S, S) anomaly maps in [0, 1].
    """

    global_probs_cls1: torch.Tensor
    global_probs_cls2: torch.Tensor
    patch_probs: torch.Tensor
    score_cls1: torch.Tensor
    score_cls2: torch.Tensor
    maps: torch.Tensor


class TipsomalyHead(nn.Module):
    """TipsOmaly from (B, 3, S, S) images in [0, 1] to a :class:`DetectorOutput`.

    Buffers (all in ``state_dict`` beside the vision tower's weights ``vision.*``):

    - ``class_text`` (C, 2, D): fixed-prompt [normal, abnormal] embeddings of C classes; a
      batch picks its rows with ``class_index`` (B,), which may be left out when C = 1.
    - ``pixel_text`` (2, D) or ``None``: learned pixel-prompt embeddings; without them the
      patches are scored against each image's class embeddings, as the paper does.
    - ``temperature`` (): logits are ``cosine / temperature``.

    ``sigma`` (map smoothing, input pixels) and ``cls`` (which CLS token gives
    ``image_score``) are fixed settings; :meth:`set_references` adds a class's normal
    references (a :class:`~tipsomaly.method.memory_bank.ReferenceBank` submodule) and the
    fusion ``mode``.

    The head shares the vision tower with the model it is built from (no copy); it is frozen:
    no parameter requires grad. :meth:`set_text` replaces the text buffers between calls.

    ``model`` is the TIPS model whose vision tower encodes the images; ``class_text`` may also
    be (2, D) (one class); ``temperature`` None takes the model's; ``sigma`` 0 turns the
    smoothing off (paper: 4).

    Example:
        >>> head = TipsomalyHead(model, class_text, pixel_text)  # doctest: +SKIP
        >>> out = head(images)  # (B, 3, 518, 518) → out.image_score (B,), out.anomaly_map
    """

    class_text: torch.Tensor
    pixel_text: torch.Tensor | None
    temperature: torch.Tensor

    def __init__(
        self,
        model: TipsModel,
        class_text: torch.Tensor,
        pixel_text: torch.Tensor | None = None,
        *,
        temperature: float | None = None,
        sigma: float = 4.0,
        cls: str = "cls1",
    ) -> None:
        super().__init__()
        if cls not in CLS_CHOICES:
            raise ValueError(f"cls must be one of {CLS_CHOICES}, got {cls!r}")
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}")
        self.vision = model.vision.requires_grad_(False)
        self.embed_dim = model.embed_dim
        self.patch_size = model.patch_size
        self.sigma = float(sigma)
        self.cls = cls
        t = model.temperature if temperature is None else temperature
        self.register_buffer(
            "temperature", torch.tensor(float(t), dtype=torch.float32, device=model.device)
        )
        self.register_buffer("class_text", torch.empty(0, 2, self.embed_dim))
        self.register_buffer("pixel_text", None)
        self.set_text(class_text, pixel_text)
        self.mode = "zero-shot"
        self.references: ReferenceBank | None = None

    def set_references(self, references: ReferenceBank | None, mode: str = "fused") -> None:
        """Score :meth:`forward`'s images against normal ``references`` (one class) in
        ``mode`` (see :func:`~tipsomaly.method.scoring.fuse_evidence`); ``None`` → zero-shot."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if references is not None and references.dim != self.embed_dim:
            raise ValueError(f"references are {references.dim}-wide, the model {self.embed_dim}")
        self.references = references
        self.mode = mode if references is not None else "zero-shot"

    def set_text(self, class_text: torch.Tensor, pixel_text: torch.Tensor | None = None) -> None:
        """Replace the buffers: ``class_text`` (C, 2, D) or (2, D), ``pixel_text`` (2, D) or None.

        Called between forward passes (the facade's job), never inside one.
        """
        if class_text.ndim == 2:
            class_text = class_text[None]
        d = self.embed_dim
        if class_text.ndim != 3 or tuple(class_text.shape[1:]) != (2, d):
            raise ValueError(f"class_text must be (C, 2, {d}), got {tuple(class_text.shape)}")
        if pixel_text is not None and tuple(pixel_text.shape) != (2, d):
            raise ValueError(f"pixel_text must be (2, {d}), got {tuple(pixel_text.shape)}")
        self.class_text = class_text
        self.pixel_text = pixel_text

    def select_class_text(self, class_index: torch.Tensor | None, batch: int) -> torch.Tensor:
        """(B,) class indices (or None with one class) → (B, 2, D) rows of ``class_text``."""
        if class_index is None:
            if self.class_text.shape[0] != 1:
                raise ValueError(
                    f"the head holds {self.class_text.shape[0]} classes: give class_index (B,)"
                )
            class_index = torch.zeros(batch, dtype=torch.long, device=self.class_text.device)
        return self.class_text.index_select(0, class_index)

    def score_features(
        self,
        features: VisionFeatures,
        class_text: torch.Tensor,
        size: tuple[int, int],
        pixel_text: torch.Tensor | None = None,
    ) -> BatchScores:
        """Vision features (B images) and (B, 2, D) class text → :class:`BatchScores` at ``size``.

        ``pixel_text`` (2, D) overrides the ``pixel_text`` buffer (training scores its
        prompts while they change); with neither, the class text scores the patches.
        """
        if pixel_text is None:
            pixel_text = self.pixel_text
        pixel = class_text if pixel_text is None else pixel_text
        t = self.temperature
        g1 = state_probabilities(features.cls1, class_text, t)[:, 0]
        g2 = state_probabilities(features.cls2, class_text, t)[:, 0]
        return self._scores(g1, g2, state_probabilities(features.patches, pixel, t), size)

    def _scores(
        self, g1: torch.Tensor, g2: torch.Tensor, patch: torch.Tensor, size: tuple[int, int]
    ) -> BatchScores:
        """:class:`BatchScores` of [normal, abnormal] probabilities: of the CLS tokens (B, 2)
        and of the patches (B, N, 2)."""
        grid = (size[0] // self.patch_size, size[1] // self.patch_size)
        return BatchScores(
            global_probs_cls1=g1,
            global_probs_cls2=g2,
            patch_probs=patch,
            score_cls1=image_scores(g1, patch),
            score_cls2=image_scores(g2, patch),
            maps=anomaly_maps(patch, grid, size, self.sigma),
        )

    def fuse(
        self,
        zero_shot: BatchScores,
        distances: ReferenceDistances,
        size: tuple[int, int],
        mode: str,
    ) -> BatchScores:
        """Zero-shot scores and distances to normal references of the same B images →
        :class:`BatchScores` in ``mode``.

        Global and patch evidence are fused by :func:`~tipsomaly.method.scoring.fuse_evidence`
        and written as [normal, abnormal] pairs ``[1 − e, e]``, so maps and image scores follow
        the zero-shot recipe unchanged; ``zero-shot`` returns ``zero_shot`` itself.
        """
        if mode == "zero-shot":
            return zero_shot

        def fused(probs: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
            evidence = fuse_evidence(probs[..., 1], few_shot_anomaly(distance), mode)
            return torch.stack([1.0 - evidence, evidence], dim=-1)

        return self._scores(
            fused(zero_shot.global_probs_cls1, distances.cls1),
            fused(zero_shot.global_probs_cls2, distances.cls2),
            fused(zero_shot.patch_probs, distances.patches),
            size,
        )

    def output(self, scores: BatchScores) -> DetectorOutput:
        """:class:`BatchScores` of B images → :class:`DetectorOutput` (``image_score`` from
        the head's ``cls``)."""
        return DetectorOutput(
            image_score=scores.score_cls1 if self.cls == "cls1" else scores.score_cls2,
            score_cls1=scores.score_cls1,
            score_cls2=scores.score_cls2,
            anomaly_map=scores.maps,
            global_cls1=scores.global_probs_cls1[:, 1],
            global_cls2=scores.global_probs_cls2[:, 1],
            patch_evidence=scores.patch_probs[..., 1],
        )

    def forward(
        self, images: torch.Tensor, class_index: torch.Tensor | None = None
    ) -> DetectorOutput:
        """(B, 3, S, S) images in [0, 1], (B,) class indices → :class:`DetectorOutput`.

        ``class_index`` picks each image's row of ``class_text``; it may be left out when the
        head holds one class. Images go to the vision tower as they are (same device).
        """
        size = (int(images.shape[-2]), int(images.shape[-1]))
        return self.features_output(self.vision(images), size, class_index)

    def features_output(
        self,
        features: VisionFeatures,
        size: tuple[int, int],
        class_index: torch.Tensor | None = None,
    ) -> DetectorOutput:
        """:meth:`forward` from the vision tower's ``features`` of B images at ``size``."""
        class_text = self.select_class_text(class_index, features.patches.shape[0])
        scores = self.score_features(features, class_text, size)
        if self.references is not None:
            scores = self.fuse(scores, self.references(features), size, self.mode)
        return self.output(scores)


__all__ = ["BatchScores", "DetectorOutput", "TipsomalyHead"]
