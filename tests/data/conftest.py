"""Helpers for the data-layer tests: tiny image files and miniature dataset trees."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def _save_image(path: Path, size: tuple[int, int] = (8, 6), value: int = 128, mode: str = "RGB"):
    """Write a small solid image (size = (width, height)); the format follows the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    color = value if mode in ("L", "1") else (value,) * len(mode)
    Image.new(mode, size, color).save(path)
    return path


def _save_mask(path: Path, size: tuple[int, int] = (8, 6), box: tuple[int, ...] = (2, 2, 5, 5)):
    """Write a 0/255 L mask with a filled rectangle ``box`` = (x0, y0, x1, y1)."""
    arr = np.zeros((size[1], size[0]), np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode="L").save(path)
    return path


def _write_png16(path: Path, arr: np.ndarray) -> Path:
    """Write a 16-bit PNG by hand (Pillow cannot write 16-bit colour PNGs).

    ``arr``: uint16, HxW (grey), HxWx2 (grey+alpha), HxWx3 (RGB) or HxWx4 (RGBA).
    """
    arr = np.asarray(arr, dtype=np.uint16)
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    color_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    h, w = arr.shape[:2]
    rows = arr.reshape(h, w * channels).astype(">u2")
    raw = b"".join(b"\x00" + rows[y].tobytes() for y in range(h))

    def chunk(tag: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color_type, 0, 0, 0)
    data = (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def save_image() -> Callable[..., Path]:
    return _save_image


@pytest.fixture
def save_mask() -> Callable[..., Path]:
    return _save_mask


@pytest.fixture
def write_png16() -> Callable[[Path, np.ndarray], Path]:
    return _write_png16


def _mvtec_tree(root: Path) -> Path:
    """Two MVTec-like classes.

    bottle: train/good 2, test/good 2, test/broken 2 (+masks), test/contamination 1 (+mask)
    wood:   train/good 1, test/good 1, test/hole 1 (+mask)
    """
    for name in ("000.png", "001.png"):
        _save_image(root / "bottle/train/good" / name)
        _save_image(root / "bottle/test/good" / name)
        _save_image(root / "bottle/test/broken" / name)
        _save_mask(root / "bottle/ground_truth/broken" / name.replace(".png", "_mask.png"))
    _save_image(root / "bottle/test/contamination/000.png")
    _save_mask(root / "bottle/ground_truth/contamination/000_mask.png")
    _save_image(root / "wood/train/good/000.png")
    _save_image(root / "wood/test/good/000.png")
    _save_image(root / "wood/test/hole/000.png")
    _save_mask(root / "wood/ground_truth/hole/000_mask.png")
    return root


@pytest.fixture
def mvtec_tree(tmp_path: Path) -> Path:
    return _mvtec_tree(tmp_path / "mvtec")
