"""The pixel-prompt training loss: AnomalyCLIP's focal and binary dice losses, as TipsOmaly uses.

Definitions follow the reference code line by line (``loss.py`` of AnomalyCLIP, used unchanged by
TipsOmaly's ``train.py``); the inputs are *probabilities*, not logits:

* :func:`focal_loss` — per pixel, the one-hot target is clamped to ``[s/(C-1), 1-s]`` (label
  smoothing ``s = 1e-5``), ``pt = Σ_c onehot_c · p_c + s``, loss ``-α_t (1-pt)^γ log(pt)``,
  averaged over every pixel of the batch (γ = 2, α = 1 for every class by default).
* :func:`binary_dice_loss` — per image, ``(2 Σ x·y + 1) / (Σ x + Σ y + 1)``; the loss is one minus
  its mean over the batch.
* :func:`segmentation_loss` — focal on the 2-channel map + dice(abnormal channel, mask) +
  dice(normal channel, 1 − mask), the reference's default (``--cls_seg_los seg``, no L1 term).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F

NORMAL, ABNORMAL = 0, 1


class LossTerms(NamedTuple):
    """The terms of one training step (scalar tensors); ``total`` is their sum."""

    focal: torch.Tensor
    dice_abnormal: torch.Tensor
    dice_normal: torch.Tensor
    total: torch.Tensor

    def values(self) -> dict[str, float]:
        """The terms as Python floats, keyed by name (``focal``, ..., ``total``)."""
        return {name: float(value.detach()) for name, value in self._asdict().items()}


def _class_weights(
    alpha: float | Sequence[float] | torch.Tensor | None, num_classes: int, balance_index: int
) -> torch.Tensor:
    """(C,) per-class weights α, as the reference builds them from its ``alpha`` argument."""
    if alpha is None:
        return torch.ones(num_classes)
    if isinstance(alpha, float):
        weights = torch.full((num_classes,), 1.0 - alpha)
        weights[balance_index] = alpha
        return weights
    weights = torch.as_tensor(alpha, dtype=torch.float32).flatten()
    if weights.numel() != num_classes:
        raise ValueError(f"alpha has {weights.numel()} values for {num_classes} classes")
    return weights / weights.sum()


def focal_loss(
    probs: torch.Tensor,
    target: torch.Tensor,
    *,
    gamma: float = 2.0,
    smooth: float = 1e-5,
    alpha: float | Sequence[float] | torch.Tensor | None = None,
    balance_index: int = 0,
    size_average: bool = True,
) -> torch.Tensor:
    """AnomalyCLIP's ``FocalLoss`` on class probabilities.

    Args:
        probs: (B, C, H, W) (or (M, C)) probabilities that sum to 1 over C.
        target: (B, H, W) or (B, 1, H, W) (or (M,)) class indices, e.g. a {0, 1} mask; read
            with ``.long()`` as the reference does.
        gamma: focusing exponent.
        smooth: label smoothing of the one-hot target, also added to ``pt`` before the log.
        alpha: ``None`` (weight 1 for every class), a float (weight ``alpha`` for class
            ``balance_index``, ``1 - alpha`` for the others) or C weights (normalised to sum 1).
        size_average: mean over the B·H·W pixels (else the per-pixel losses, (B·H·W,)).

    Returns:
        the scalar loss (or the per-pixel losses).
    """
    if smooth is not None and not 0.0 <= smooth <= 1.0:
        raise ValueError(f"smooth must be in [0, 1], got {smooth}")
    num_classes = probs.shape[1]
    if probs.ndim > 2:  # (B, C, ...) -> (B·H·W, C)
        probs = probs.reshape(probs.shape[0], num_classes, -1).transpose(1, 2)
        probs = probs.reshape(-1, num_classes)
    index = target.reshape(-1).long()
    if index.numel() != probs.shape[0]:
        raise ValueError(f"{index.numel()} targets for {probs.shape[0]} probability rows")
    one_hot = F.one_hot(index, num_classes).to(probs.dtype)
    if smooth:
        one_hot = one_hot.clamp(smooth / (num_classes - 1), 1.0 - smooth)
    pt = (one_hot * probs).sum(dim=1) + (smooth or 0.0)
    weights = _class_weights(alpha, num_classes, balance_index).to(probs.device, probs.dtype)
    loss = -weights[index] * torch.pow(1.0 - pt, gamma) * pt.log()
    return loss.mean() if size_average else loss


def binary_dice_loss(
    probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """AnomalyCLIP's ``BinaryDiceLoss``: ``1 − mean_b (2 Σ x·y + s) / (Σ x + Σ y + s)``.

    Args:
        probs: (B, H, W) probabilities of one class.
        target: (B, H, W) {0, 1} target of that class.
        smooth: the additive smoothing ``s`` (1 in the reference).
    """
    n = target.shape[0]
    x = probs.reshape(n, -1)
    y = target.reshape(n, -1).to(x.dtype)
    dice = (2.0 * (x * y).sum(dim=1) + smooth) / (x.sum(dim=1) + y.sum(dim=1) + smooth)
    return 1.0 - dice.sum() / n


def binarize_masks(masks: torch.Tensor) -> torch.Tensor:
    """{0, 1} float masks from any masks: 1 where the value is above 0.5."""
    return (masks > 0.5).to(torch.float32)


def segmentation_loss(
    probs: torch.Tensor, masks: torch.Tensor, *, gamma: float = 2.0, smooth: float = 1e-5
) -> LossTerms:
    """The TipsOmaly training loss on upsampled [normal, abnormal] probability maps.

    Args:
        probs: (B, 2, H, W) per-pixel probabilities, channel 0 normal, 1 abnormal.
        masks: (B, H, W) ground truth (binarised here with ``> 0.5``).

    Returns:
        :class:`LossTerms`: focal, dice(abnormal, mask), dice(normal, 1 − mask), their sum.
    """
    if probs.ndim != 4 or probs.shape[1] != 2:
        raise ValueError(f"expected (B, 2, H, W) probabilities, got {tuple(probs.shape)}")
    if tuple(masks.shape) != (probs.shape[0], *probs.shape[2:]):
        raise ValueError(f"masks {tuple(masks.shape)} do not match maps {tuple(probs.shape)}")
    target = binarize_masks(masks).to(probs.device)
    focal = focal_loss(probs, target, gamma=gamma, smooth=smooth)
    dice_abnormal = binary_dice_loss(probs[:, ABNORMAL], target)
    dice_normal = binary_dice_loss(probs[:, NORMAL], 1.0 - target)
    return LossTerms(focal, dice_abnormal, dice_normal, focal + dice_abnormal + dice_normal)
