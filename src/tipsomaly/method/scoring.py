"""TipsOmaly's scores: two-way softmax of cosine/temperature, and local evidence injection."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
