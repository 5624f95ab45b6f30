"""Per-image failures stay per-image: the pixel limit, Pillow's bomb check, memory, odd names."""

from __future__ import annotations

import struct
import subprocess
import sys
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

import tipsomaly.data.images as images
from tipsomaly.data.dataset import AnomalyDataset
from tipsomaly.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    load_image,
    load_mask,
    original_hw,
)
from tipsomaly.data.meta import Sample


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG declaring width × height RGB pixels whose data is a few bytes (a 'bomb' header)."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )
    return path


def _png(path: Path, w: int = 30, h: int = 20, mode: str = "RGB") -> Path:
    Image.new(mode, (w, h), 90 if mode == "L" else (90, 20, 200)).save(path)
    return path


def test_default_limit_refuses_a_13000_square_png_before_decoding(tmp_path):
    bomb = _png_header_only(tmp_path / "bomb.png", 13000, 13000)
    assert bomb.stat().st_size < 1000
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pillow's DecompressionBombWarning must not escape
        with pytest.raises(ImageLoadError) as info:
            load_image(bomb)
    text = str(info.value)
    assert "bomb.png" in text and "13000×13000" in text and "169.0 megapixels" in text
    assert f"{DEFAULT_MAX_PIXELS:,}" in text and "max_pixels" in text
    with pytest.raises(ImageLoadError, match="13000×13000"):
        original_hw(bomb)


def test_pillows_bomb_error_becomes_image_load_error_with_size_and_limit(tmp_path):
    # 20000 × 20000 = 400 MP is over Pillow's own error threshold (2 × 89.5 MP)
    bomb = _png_header_only(tmp_path / "huge.png", 20000, 20000)
    with pytest.raises(ImageLoadError) as info:
        load_image(bomb, max_pixels=50_000_000)
    text = str(info.value)
    assert "huge.png" in text and "20000×20000" in text and "50,000,000" in text


def test_the_limit_can_be_raised_above_pillows(tmp_path):
    bomb = _png_header_only(tmp_path / "huge.png", 20000, 20000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # allowed by the limit: the header passes and decoding reports the missing data
        with pytest.raises(ImageLoadError, match="truncated or corrupt"):
            load_image(bomb, max_pixels=None)
        assert original_hw(bomb, max_pixels=500_000_000) == (20000, 20000)
    assert Image.MAX_IMAGE_PIXELS is not None  # Pillow's own limit is restored


def test_small_limit_per_call_and_no_process_wide_state(tmp_path):
    f = _png(tmp_path / "a.png", 30, 20)
    assert load_image(f, max_pixels=600).size == (30, 20)
    with pytest.raises(ImageLoadError, match="30×20"):
        load_image(f, max_pixels=599)
    with pytest.raises(ImageLoadError, match="30×20"):
        load_mask(f, 8, max_pixels=10)
    with pytest.raises(ImageLoadError, match="over the limit of 100 pixels"):
        load_image(f, max_pixels=100)
    assert load_image(f).size == (30, 20)  # a call's limit leaves no trace on the next one
    assert not hasattr(images, "set_max_pixels")  # no process-wide setting to leak
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(f, max_pixels=0)


def test_dataset_applies_its_limit_per_sample(tmp_path):
    big, small = _png(tmp_path / "big.png", 40, 40), _png(tmp_path / "small.png", 5, 5)
    samples = [Sample(p, None, "c", "good", 0) for p in (big, small)]
    ds = AnomalyDataset(samples, 14, max_pixels=1000)
    assert "40×40" in ds[0]["error"] and ds[1]["error"] is None


def test_memory_error_while_converting_is_this_images_error(tmp_path, monkeypatch):
    f = _png(tmp_path / "grey.png", mode="L")

    def no_memory(image):
        raise MemoryError

    monkeypatch.setattr(images, "to_rgb", no_memory)
    with pytest.raises(ImageLoadError, match="not enough memory") as info:
        load_image(f)
    assert "grey.png" in str(info.value)


def test_unexpected_decoder_exception_is_this_images_error(tmp_path, monkeypatch):
    f = _png(tmp_path / "x.png")

    def broken(self):
        raise IndexError("plugin bug")

    monkeypatch.setattr(Image.Image, "load", broken)
    monkeypatch.setattr(ImageFile.ImageFile, "load", broken)
    with pytest.raises(ImageLoadError, match="IndexError"):
        load_image(f)


def test_odd_names_are_this_images_error(tmp_path):
    with pytest.raises(ImageLoadError, match="invalid file name"):
        load_image(str(tmp_path / "nul\0byte.png"))
    with pytest.raises(ImageLoadError):
        original_hw(str(tmp_path / "nul\0byte.png"))


@pytest.mark.skipif(sys.platform != "linux", reason="RLIMIT_AS semantics")
def test_real_memory_limit_gives_image_load_error(tmp_path):
    """Under an address-space limit, a large grey PNG fails as that image's error."""
    f = tmp_path / "grey.png"
    Image.fromarray(np.zeros((3000, 4000), np.uint8), mode="L").save(f)  # 36 MB once in RGB
    code = f"""
import resource, sys
from tipsomaly.data.images import ImageLoadError, load_image
def vm():
    for line in open("/proc/self/status"):
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
limit = vm() + 30 * 2**20  # room for the grey image, not for its RGB copy
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
try:
    load_image({str(f)!r})
except ImageLoadError as exc:
    print("ImageLoadError:", exc)
    sys.exit(0)
print("loaded")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if "loaded" in result.stdout:
        pytest.skip("the allocator did not hit the limit here")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "grey.png" in result.stdout and "memory" in result.stdout
