"""TipsOmaly's scores: two-way softmax of cosine/temperature, and local evidence injection."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .names import MODES


def state_probabilities(
    features: torch.Tensor, text: torch.Tensor, temperature: float
) -> torch.Tensor:
    """softmax over [normal, abnormal] of ``cos(feature, text) / temperature``, in fp32.

    features: (B, N, D) visual tokens (any norm); text: (2, D) or (B, 2, D) state embeddings
    (any norm). Returns (B, N, 2) probabilities, ``[..., 1]`` abnormal.
    """
    f = F.normalize(features.float(), dim=-1)
    t = F.normalize(text.float(), dim=-1)
    logits = f @ t.transpose(-1, -2) if t.ndim == 3 else f @ t.T
    return torch.softmax(logits / temperature, dim=-1)


def image_scores(global_probs: torch.Tensor, patch_probs: torch.Tensor) -> torch.Tensor:
    """Local evidence injection: abnormal global prob + max over patches of abnormal patch prob.

    global_probs: (B, 2); patch_probs: (B, N, 2) → (B,).
    """
    return global_probs[:, 1] + patch_probs[..., 1].amax(dim=1)


def few_shot_anomaly(distance: torch.Tensor) -> torch.Tensor:
    """Cosine distance to the nearest normal reference, ``1 − cos`` in [0, 2] → [0, 1].

    Halved (WinCLIP's few-shot map) so few-shot evidence lives on the same [0, 1] scale as the
    zero-shot abnormal probabilities it is fused with.
    """
    return distance.float() / 2.0


def fuse_evidence(zero_shot: torch.Tensor, few_shot: torch.Tensor, mode: str) -> torch.Tensor:
    """Abnormal evidence in [0, 1] of one kind (global or per patch) under ``mode``.

    ``zero-shot``: the abnormal probability against the class's prompts; ``few-shot``: the
    halved distance to the nearest reference (:func:`few_shot_anomaly`); ``fused``: their mean
    (WinCLIP+). Maps and image scores are then built from the result exactly as in zero-shot:
    map = smoothed upsampled patch evidence, image score = global + max patch evidence, in
    [0, 2].
    """
    if mode == "zero-shot":
        return zero_shot.float()
    if mode == "few-shot":
        return few_shot.float()
    if mode == "fused":
        return (zero_shot.float() + few_shot.float()) / 2.0
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
