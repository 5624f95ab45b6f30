"""Metrics of the golden metric cases (metric_cases.npz) against golden.json, for every folder."""

from __future__ import annotations

import json

import numpy as np
import pytest

from goldens import golden_dirs
from tipsomaly.metrics import image_metrics, pixel_metrics


def _cases() -> list:
    params = []
    for directory in golden_dirs():
        config = json.loads((directory / "golden.json").read_text())
        for case in config["metric_cases"]["cases"]:
            params.append(pytest.param(directory, case, id=f"{directory.name}-{case}"))
    return params


@pytest.mark.parametrize(("directory", "case"), _cases())
def test_metric_case(directory, case):
    config = json.loads((directory / "golden.json").read_text())
    section = config["metric_cases"]
    expected = section["cases"][case]["metrics"]
    tol = config["tolerances"]["metrics_from_given_arrays_abs"]
    with np.load(directory / section["file"], allow_pickle=False) as data:
        maps = data[f"{case}_pixel_maps"]
        masks = data[f"{case}_masks"]
        scores = data[f"{case}_image_scores"]
        labels = data[f"{case}_image_labels"]

    got = {**image_metrics(scores, labels), **pixel_metrics(maps, masks, aupro="zsad")}
    assert set(expected) <= set(got), f"unknown metric names {set(expected) - set(got)}"
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, abs=tol, nan_ok=True), name
