"""Tiled inference at native resolution: a grid of overlapping tiles, and their maps blended back.

Large images with small defects lose them when the whole image is resized to the model's input
(a 12-px defect of a 4000-px image is 1.6 px at 518). Tiling cuts the image into overlapping
square tiles of ``tile`` original pixels, resizes each to the model input (the one resize rule,
:func:`~tipsomaly.data.images.preprocess`), scores them in batches and blends their maps into
one map at the original resolution.

Everything here is a pure function of its arguments, or (:class:`MapMerger`) an accumulator
made for one image and dropped after it: nothing is stored on a long-lived object between
"tile" and "untile" (anomalib's ``Tiler`` keeps the last image's shape on itself, which breaks
when two requests share it). A :class:`TileGrid` is frozen and carries its own shape.

Grid (:func:`plan_tiles`): along each axis, tiles of ``min(tile, side)`` pixels start at
evenly spread positions, the first at 0 and the last flush with the far edge, as few as keep
neighbours overlapping by at least ``overlap`` of a tile. An image no larger than ``tile``
on both sides is one tile: the whole image, exactly the untiled input.

Blending (:class:`MapMerger`): each tile's (S, S) map is resized bilinearly to its box (as the
untiled map is resized to the image) and weighted by a separable cosine-squared (Hann) window,
``floor + (1 − floor)·sin²(π(i + ½)/n)`` per axis, which falls to ``floor`` at the tile's
edges; the merged map is the weighted sum over the tiles divided by the summed weights. A
tile's own edge therefore carries almost no weight where a neighbour covers the same pixels, so
no seam shows; the ``floor`` keeps the weights positive where only one tile covers a pixel (the
image's borders), where the division gives that tile's value exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from PIL import Image

from ..data.images import preprocess
from .config import DEFAULT_OVERLAP  # the setting's default: one definition, in the config

__all__ = [
    "MAX_AUTO_TILES",
    "WINDOW_FLOOR",
    "Box",
    "MapMerger",
    "TileGrid",
    "auto_tile_size",
    "axis_starts",
    "crop_tiles",
    "merge_maps",
    "plan_tiles",
    "resize_map",
    "tile_window",
]

#: ``tile="auto"`` grows the tile (from the model input's side) until the grid has at most this
#: many tiles
MAX_AUTO_TILES = 64
#: the blending window's value at a tile's edge (relative to 1 at its centre)
WINDOW_FLOOR = 1e-3


class Box(NamedTuple):
    """A tile in original pixels: rows ``y0:y1``, columns ``x0:x1`` (ends excluded)."""

    y0: int
    x0: int
    y1: int
    x1: int

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    @property
    def width(self) -> int:
        return self.x1 - self.x0


@dataclass(frozen=True)
class TileGrid:
    """The tiles of one image: ``boxes`` in row-major order over an ``image_hw`` image.

    ``tile`` is the side asked for (each box is ``min(tile, H) × min(tile, W)``), ``overlap``
    the least fraction of a tile that neighbours share.
    """

    image_hw: tuple[int, int]
    tile: int
    overlap: float
    boxes: tuple[Box, ...]

    def __len__(self) -> int:
        return len(self.boxes)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of tiles."""
        rows = len({b.y0 for b in self.boxes})
        return rows, len(self.boxes) // max(rows, 1)


def axis_starts(length: int, tile: int, overlap: float = DEFAULT_OVERLAP) -> list[int]:
    """Start offsets of tiles of ``min(tile, length)`` pixels covering ``[0, length)``.

    The fewest tiles whose neighbours share at least ``overlap · tile`` pixels, spread evenly
    (rounded), the first at 0 and the last ending at ``length``.
    """
    if length < 1 or tile < 1:
        raise ValueError(f"length and tile must be >= 1, got {length} and {tile}")
    side = min(tile, length)
    if side == length:
        return [0]
    stride = max(1, math.floor(side * (1.0 - overlap)))
    n = math.ceil((length - side) / stride) + 1
    return [round(i * (length - side) / (n - 1)) for i in range(n)]


def plan_tiles(image_hw: tuple[int, int], tile: int, overlap: float = DEFAULT_OVERLAP) -> TileGrid:
    """The tile grid of an ``image_hw`` (height, width) image: see the module doc."""
    h, w = (int(v) for v in image_hw)
    ys = axis_starts(h, tile, overlap)
    xs = axis_starts(w, tile, overlap)
    th, tw = min(tile, h), min(tile, w)
    boxes = tuple(Box(y, x, y + th, x + tw) for y in ys for x in xs)
    return TileGrid((h, w), int(tile), float(overlap), boxes)


def auto_tile_size(
    image_hw: tuple[int, int],
    input_size: int,
    overlap: float = DEFAULT_OVERLAP,
    max_tiles: int = MAX_AUTO_TILES,
) -> int:
    """``tile="auto"``: tiles of ``input_size`` original pixels (the model sees the image at
    its own resolution), grown by 25 % at a time while the grid has more than ``max_tiles``
    tiles. A 4000×3000 image at 518 gets 648-px tiles (56 tiles); one of at most
    ``input_size`` on both sides is one tile (untiled)."""
    tile = int(input_size)
    while len(plan_tiles(image_hw, tile, overlap)) > max_tiles:
        tile = math.ceil(tile * 1.25)
    return tile


def crop_tiles(image: Image.Image, boxes: Sequence[Box], size: int) -> torch.Tensor:
    """(n, 3, S, S) float32 model inputs of the ``boxes`` of an RGB PIL image, each crop
    resized by :func:`~tipsomaly.data.images.preprocess` (bilinear, antialiased)."""
    return torch.stack([preprocess(image.crop((b.x0, b.y0, b.x1, b.y1)), size) for b in boxes])


def _axis_window(n: int, floor: float) -> torch.Tensor:
    i = torch.arange(n, dtype=torch.float64)
    return floor + (1.0 - floor) * torch.sin(math.pi * (i + 0.5) / n) ** 2


def tile_window(height: int, width: int, floor: float = WINDOW_FLOOR) -> torch.Tensor:
    """(height, width) float32 blending weights: the separable window of the module doc."""
    return (_axis_window(height, floor)[:, None] * _axis_window(width, floor)[None, :]).float()


def resize_map(
    m: torch.Tensor, size: tuple[int, int], antialias: bool | None = None
) -> torch.Tensor:
    """(h, w) or (B, h, w) float maps → bilinear (align_corners=False) at ``size``; unchanged
    when the size is already right. ``antialias``: None = when shrinking."""
    squeeze = m.ndim == 2
    x = m[None] if squeeze else m
    if tuple(x.shape[-2:]) != tuple(size):
        if antialias is None:
            antialias = size[0] < x.shape[-2] or size[1] < x.shape[-1]
        x = F.interpolate(
            x[:, None].float(), size=size, mode="bilinear", align_corners=False, antialias=antialias
        )[:, 0]
    return x[0] if squeeze else x


class MapMerger:
    """Blends tile maps into one (H, W) map (see the module doc); make one per image.

    Memory: two float32 (H, W) buffers (the weighted sum and the summed weights) plus one
    tile's temporaries, whatever the number of tiles.

    Example:
        >>> merger = MapMerger((300, 420))  # doctest: +SKIP
        >>> merger.add(maps, grid.boxes[:8])  # (8, S, S) maps of the first 8 tiles
        >>> full = merger.result()  # (300, 420)
    """

    def __init__(self, image_hw: tuple[int, int], floor: float = WINDOW_FLOOR) -> None:
        h, w = (int(v) for v in image_hw)
        self.image_hw = (h, w)
        self.floor = float(floor)
        self._sum = torch.zeros(h, w, dtype=torch.float32)
        self._weight = torch.zeros(h, w, dtype=torch.float32)
        self._windows: dict[tuple[int, int], torch.Tensor] = {}

    def add(self, maps: torch.Tensor, boxes: Sequence[Box]) -> None:
        """(n, s, s) maps of the tiles ``boxes`` (any s; moved to the CPU as float32)."""
        if self._weight is None:
            raise RuntimeError("MapMerger.add() after result()")
        if maps.ndim != 3 or maps.shape[0] != len(boxes):
            raise ValueError(f"expected ({len(boxes)}, s, s) maps, got {tuple(maps.shape)}")
        maps = maps.detach().float().cpu()
        for m, b in zip(maps, boxes, strict=True):
            size = (b.height, b.width)
            window = self._windows.get(size)
            if window is None:
                window = self._windows[size] = tile_window(*size, floor=self.floor)
            # the untiled map's resize (no antialiasing): one tile over the whole image gives
            # the untiled map
            self._sum[b.y0 : b.y1, b.x0 : b.x1] += resize_map(m, size, antialias=False) * window
            self._weight[b.y0 : b.y1, b.x0 : b.x1] += window

    def result(self) -> torch.Tensor:
        """(H, W) float32: the blended map; 0 where no tile was added.

        Computed in place in the merger's buffers (no third full-size array): call it once,
        after the last :meth:`add`.
        """
        if self._weight is None:
            raise RuntimeError("MapMerger.result() was called already")
        # covered pixels weigh >= floor² (1e-6); uncovered ones hold 0 / tiny = 0
        out = self._sum.div_(self._weight.clamp_min_(1e-30))
        self._weight = None  # type: ignore[assignment]
        return out


def merge_maps(maps: torch.Tensor, boxes: Sequence[Box], image_hw: tuple[int, int]) -> torch.Tensor:
    """(n, s, s) tile maps of ``boxes`` → the (H, W) blended map (:class:`MapMerger` at once)."""
    merger = MapMerger(image_hw)
    merger.add(maps, boxes)
    return merger.result()
