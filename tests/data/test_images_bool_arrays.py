"""Boolean image arrays and tensors: False is black, True is white (0/255), in every form."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from tipsomaly.data.images import preprocess, to_pil

BITS = np.array([[0, 1, 1, 0], [1, 0, 0, 1], [1, 1, 0, 0]], bool)


def _white_where_true(bits: np.ndarray) -> np.ndarray:
    """The expected RGB image, written out with numpy: 255 where True, 0 elsewhere."""
    grey = np.where(bits, 255, 0).astype(np.uint8)
    return grey if grey.ndim == 3 else np.repeat(grey[..., None], 3, axis=2)


@pytest.mark.parametrize(
    "image,bits",
    [
        (BITS, BITS),
        (BITS[..., None], BITS),
        (np.stack([BITS, ~BITS, BITS], -1), np.stack([BITS, ~BITS, BITS], -1)),
        (torch.from_numpy(BITS), BITS),
        (torch.from_numpy(BITS)[None], BITS),
    ],
    ids=["HxW", "HxWx1", "HxWx3", "tensor-HxW", "tensor-1xHxW"],
)
def test_bool_images_are_black_and_white(image, bits):
    rgb = to_pil(image)
    assert rgb.mode == "RGB" and rgb.size == (bits.shape[1], bits.shape[0])
    np.testing.assert_array_equal(np.asarray(rgb), _white_where_true(bits))


def test_bool_image_preprocesses_like_its_0_255_twin():
    expected_image = Image.fromarray(_white_where_true(BITS)).resize(
        (14, 14), Image.Resampling.BILINEAR
    )
    expected = np.asarray(expected_image).transpose(2, 0, 1) / 255.0
    got = preprocess(BITS, 14)
    assert got.dtype == torch.float32 and tuple(got.shape) == (3, 14, 14)
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-7)
    assert float(got.max()) == 1.0  # white stays white, not 1/255
