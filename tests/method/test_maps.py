"""The map recipe: Gaussian smoothing with scipy's semantics, upsampling, shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from tipsomaly.method.maps import anomaly_maps, gaussian_blur, reflect_indices


@pytest.mark.parametrize(
    "shape,sigma",
    [((3, 70, 70), 4.0), ((2, 10, 13), 4.0), ((1, 5, 40), 2.5), ((2, 64, 48), 1.0), ((1, 3, 3), 7)],
    ids=["square", "smaller-than-kernel", "thin", "sigma1", "tiny"],
)
def test_gaussian_blur_matches_scipy(shape, sigma):
    maps = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    expected = np.stack(
        [gaussian_filter(m, sigma, mode="reflect", truncate=4.0) for m in maps.numpy()]
    )
    np.testing.assert_allclose(gaussian_blur(maps, sigma).numpy(), expected, atol=1e-6)


def test_reflect_padding_repeats_the_edge():
    # "abc" padded by 4 on each side: c c b a | a b c | c b a a
    assert reflect_indices(3, 4).tolist() == [2, 2, 1, 0, 0, 1, 2, 2, 1, 0, 0]


def test_zero_sigma_is_identity():
    maps = torch.rand(2, 5, 5)
    assert torch.equal(gaussian_blur(maps, 0), maps)


def test_anomaly_maps_peak_where_the_patches_are_abnormal():
    probs = torch.zeros(1, 16, 2)
    probs[..., 0] = 1.0
    probs[0, 5] = torch.tensor([0.0, 1.0])  # row 1, column 1 of a 4×4 grid
    maps = anomaly_maps(probs, (4, 4), (56, 56), sigma=2)
    assert maps.shape == (1, 56, 56)
    y, x = np.unravel_index(int(maps[0].argmax()), (56, 56))
    assert 14 <= y < 28 and 14 <= x < 28
    assert 0.0 <= float(maps.min()) and float(maps.max()) <= 1.0


def test_anomaly_maps_rejects_a_wrong_grid():
    with pytest.raises(ValueError, match="grid"):
        anomaly_maps(torch.rand(1, 10, 2), (4, 4), (56, 56))
