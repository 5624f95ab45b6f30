"""Per-class metrics of the pipeline's own maps against the reference evaluation (golden)."""

from __future__ import annotations

import math

import numpy as np
import torch

from tipsomaly.method.detector import Detector
from tipsomaly.method.pixel_prompts import PixelPrompts
from tipsomaly.metrics import class_metrics


def test_per_class_metrics_end_to_end(golden):
    pipeline = golden.config["pipeline"]
    detector = Detector(
        golden.model(),
        prompt_type=pipeline["prompt_type"],
        pixel_prompts=PixelPrompts(torch.from_numpy(golden["learnable_prompts"])),
        image_size=pipeline["image_size"],
        sigma=pipeline["sigma"],
    )
    class_ids = golden["class_ids"]
    expected = golden.config["metrics"]["per_class"]
    tol = golden.tol["metrics_end_to_end_abs"]
    for k, class_name in enumerate(pipeline["class_names"]):
        rows = np.flatnonzero(class_ids == k)
        scores = detector.score_batch(torch.from_numpy(golden["images"][rows]), class_name)
        got = class_metrics(
            scores.score_cls1.numpy(),
            scores.score_cls2.numpy(),
            golden["labels"][rows],
            scores.maps.numpy(),
            golden["masks"][rows] > 0.5,
            aupro="zsad",
        )
        for name, value in expected[class_name].items():
            assert name in got, f"{class_name}: metric {name} not computed"
            if math.isnan(value):
                assert math.isnan(got[name])
            else:
                assert abs(got[name] - value) <= tol, (class_name, name, got[name], value)
