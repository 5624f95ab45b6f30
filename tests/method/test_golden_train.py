"""The training loss, and one training step against the reference code on every golden folder."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tipsomaly.method.losses import focal_loss, segmentation_loss
from tipsomaly.method.prompts import load_prompts
from tipsomaly.runners.train import LOSS_NAMES, make_optimizer, pixel_prompt_losses


def _one_step(golden):
    """Loss terms, gradient and the prompts after one Adam step, from the golden inputs."""
    model = golden.model()
    pipeline = golden.config["pipeline"]
    step = golden.config["training_step"]
    assert list(step["train_loss_order"]) == list(LOSS_NAMES)
    prompts = load_prompts(pipeline["prompt_type"])
    param = torch.from_numpy(golden["learnable_prompts"]).clone().requires_grad_(True)
    with torch.no_grad():
        patches = model.encode_image(torch.from_numpy(golden["images"])).patches
    terms = pixel_prompt_losses(
        model,
        prompts,
        param,
        patches,
        torch.from_numpy(golden["masks"]),
        pipeline["image_size"],
        class_word=pipeline.get("learnable_class_name", "object"),
    )
    optimizer = make_optimizer(param)  # the reference's Adam: lr 1e-3, betas (0.5, 0.999)
    optimizer.zero_grad()
    terms.total.backward()
    grad = param.grad.detach().clone()
    optimizer.step()
    return terms, grad, param.detach()


def test_one_training_step(golden):
    terms, grad, after = _one_step(golden)
    got = np.array([terms.values()[name] for name in LOSS_NAMES])
    expected = golden["train_loss"]
    assert np.all(np.abs(got - expected) <= golden.tol["train_loss_rel"] * np.abs(expected))
    assert np.abs(grad.numpy() - golden["train_grad"]).max() <= golden.tol["train_grad_abs"]
    assert (
        np.abs(after.numpy() - golden["prompts_after_step"]).max()
        <= golden.tol["prompts_after_step_abs"]
    )
    # the step really moved the prompts (Adam's first step is ~lr per coordinate)
    assert np.abs(after.numpy() - golden["learnable_prompts"]).max() > 0


def test_losses_of_perfect_and_inverted_maps():
    masks = torch.zeros(2, 6, 6)
    masks[0, 1:4, 2:5] = 1.0
    perfect = torch.stack([1 - masks, masks], dim=1)
    terms = segmentation_loss(perfect, masks)
    # focal: pt = 1 - 1e-5 + 1e-5 = 1 for every pixel → 0; dice: smoothing only
    assert float(terms.focal) == pytest.approx(0.0, abs=1e-9)
    assert float(terms.dice_normal) == pytest.approx(0.0, abs=1e-9)
    assert float(terms.dice_abnormal) == pytest.approx(0.0, abs=1e-9)
    inverted = segmentation_loss(perfect.flip(1), masks)
    assert float(inverted.focal) > 5 and float(inverted.dice_abnormal) > 0.5
    assert float(inverted.total) == pytest.approx(
        float(inverted.focal + inverted.dice_abnormal + inverted.dice_normal)
    )


def test_focal_loss_alpha_and_reduction_follow_the_reference():
    probs = torch.softmax(torch.randn(3, 2, 4, 4, generator=torch.Generator().manual_seed(0)), 1)
    target = (torch.rand(3, 4, 4, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    per_pixel = focal_loss(probs, target, size_average=False)
    assert per_pixel.shape == (48,)
    assert float(per_pixel.mean()) == pytest.approx(float(focal_loss(probs, target)))
    # alpha as a float weighs class `balance_index` by alpha and the others by 1 - alpha
    weighted = focal_loss(probs, target, alpha=0.25, size_average=False)
    w = torch.where(target.flatten() == 0, 0.25, 0.75)
    torch.testing.assert_close(weighted, per_pixel * w)
    # alpha as per-class weights is normalised to sum to 1
    listed = focal_loss(probs, target, alpha=[1.0, 3.0], size_average=False)
    torch.testing.assert_close(listed, weighted)
    with pytest.raises(ValueError):
        focal_loss(probs, target, smooth=2.0)
