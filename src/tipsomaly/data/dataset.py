"""``meta.json`` samples → model-ready tensors: a fault-tolerant torch Dataset and its collate.

A sample whose image or mask cannot be read does not stop the loader: it comes back with an
``error`` string and placeholder tensors, and :func:`collate_samples` leaves it out of the
batch tensors and lists it under ``"errors"`` so the caller can report and exclude it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from .images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    MaxPixels,
    binarize_mask_image,
    load_image,
    open_image,
    preprocess,
    resize_mask,
    resolve_max_pixels,
)
from .meta import DatasetMeta, Sample, read_meta

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]


class AnomalyDataset(Dataset):
    """Images (and masks) of a dataset split, preprocessed for the model.

    ``dataset[i]`` is a dict:

    ========== ===================================================================
    key        value
    ========== ===================================================================
    image      float32 tensor (3, S, S) in [0, 1] (:func:`~tipsomaly.data.images.preprocess`)
    mask       float32 tensor (S, S) in {0, 1}; all zeros for normal images and for
               anomalous images without a mask
    label      int, 1 anomalous / 0 normal
    has_mask   bool, a mask file was read
    class_name str
    specie_name str (defect type, ``good`` for normal images)
    path       str, the image file
    original_hw (height, width) of the image file in pixels, after EXIF orientation;
               (0, 0) when it could not be read
    index      int, position in the dataset
    error      None, or a message naming the file and the problem (image and mask
               are then zero placeholders)
    ========== ===================================================================

    ``samples``: a :class:`~tipsomaly.data.meta.DatasetMeta` or a sequence of samples;
    ``load_masks=False``: masks all zero; ``max_pixels``: as :func:`~.images.load_image`'s,
    kept on the dataset so that DataLoader worker processes apply the same limit.
    """

    def __init__(
        self,
        samples: DatasetMeta | Sequence[Sample],
        image_size: int,
        *,
        load_masks: bool = True,
        max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
    ) -> None:
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise ValueError(f"image_size must be a positive integer, got {image_size!r}")
        self.samples: list[Sample] = list(samples)
        self.image_size = image_size
        self.load_masks = load_masks
        self.max_pixels = resolve_max_pixels(max_pixels)

    @classmethod
    def from_root(
        cls,
        root: PathLike,
        image_size: int,
        *,
        split: str = "test",
        classes: Sequence[str] | None = None,
        load_masks: bool = True,
        max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
        allow_outside_root: bool = False,
    ) -> AnomalyDataset:
        """Read ``root/meta.json`` (:func:`~tipsomaly.data.meta.read_meta`) and wrap one split."""
        meta = read_meta(root, split, classes, allow_outside_root=allow_outside_root)
        return cls(meta, image_size, load_masks=load_masks, max_pixels=max_pixels)

    def __len__(self) -> int:
        return len(self.samples)

    def _load_image(self, path: PathLike) -> Any:
        # The limit is passed only when it differs from the default one, so a plain
        # ``load_image(path)`` replacement (tests, instrumentation) keeps working.
        if self.max_pixels == DEFAULT_MAX_PIXELS:
            return load_image(path)
        return load_image(path, max_pixels=self.max_pixels)

    def _load_mask(self, sample: Sample, image_hw: tuple[int, int]) -> torch.Tensor:
        mask_image = open_image(sample.mask_path, max_pixels=self.max_pixels)
        try:
            binary = binarize_mask_image(mask_image)
        except MemoryError:
            raise ImageLoadError(sample.mask_path, "not enough memory to read the mask") from None
        except (OSError, ValueError) as exc:
            raise ImageLoadError(sample.mask_path, f"cannot read as a mask ({exc})") from None
        if binary.shape != image_hw:
            logger.warning(
                "mask %s is %dx%d but its image %s is %dx%d (h x w); both are resized to %d",
                sample.mask_path,
                *binary.shape,
                sample.image_path,
                *image_hw,
                self.image_size,
            )
        return resize_mask(binary, self.image_size)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        size = self.image_size
        item: dict[str, Any] = {
            "image": None,
            "mask": None,
            "label": int(sample.anomaly),
            "has_mask": False,
            "class_name": sample.class_name,
            "specie_name": sample.specie_name,
            "path": str(sample.image_path),
            "original_hw": (0, 0),
            "index": int(index),
            "error": None,
        }
        try:
            img = self._load_image(sample.image_path)
            item["original_hw"] = (img.height, img.width)
            item["image"] = preprocess(img, size)
            if self.load_masks and sample.anomaly == 1 and sample.mask_path is not None:
                item["mask"] = self._load_mask(sample, item["original_hw"])
                item["has_mask"] = True
        except (ImageLoadError, OSError, ValueError, MemoryError) as exc:
            message = str(exc)
            logger.warning("skipping sample %d: %s", index, message)
            item.update(image=None, mask=None, has_mask=False, error=message)
        if item["image"] is None:
            item["image"] = torch.zeros((3, size, size), dtype=torch.float32)
        if item["mask"] is None:
            item["mask"] = torch.zeros((size, size), dtype=torch.float32)
        return item


def collate_samples(batch: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate :class:`AnomalyDataset` items, leaving failed ones out of the tensors.

    Returns a dict with, for the B items without an error: ``image`` (B, 3, S, S), ``mask``
    (B, S, S), ``label`` (B,) int64, ``has_mask`` (B,) bool, ``original_hw`` (B, 2) int64
    (height, width), ``index`` (B,) int64, and lists ``class_name``, ``specie_name``, ``path``;
    plus ``errors``: one dict (``index``, ``path``, ``class_name``, ``error``) per failed item.
    B may be 0.
    """
    if not batch:
        raise ValueError("collate_samples: empty batch")
    good = [b for b in batch if b.get("error") is None]
    errors = [
        {k: b[k] for k in ("index", "path", "class_name", "error")}
        for b in batch
        if b.get("error") is not None
    ]
    image_shape = tuple(batch[0]["image"].shape)
    mask_shape = tuple(batch[0]["mask"].shape)

    def stack(key: str, shape: tuple[int, ...]) -> torch.Tensor:
        if good:
            return torch.stack([b[key] for b in good])
        return torch.zeros((0, *shape), dtype=torch.float32)

    return {
        "image": stack("image", image_shape),
        "mask": stack("mask", mask_shape),
        "label": torch.tensor([b["label"] for b in good], dtype=torch.int64),
        "has_mask": torch.tensor([b["has_mask"] for b in good], dtype=torch.bool),
        "original_hw": torch.tensor(
            [list(b["original_hw"]) for b in good], dtype=torch.int64
        ).reshape(-1, 2),
        "index": torch.tensor([b["index"] for b in good], dtype=torch.int64),
        "class_name": [b["class_name"] for b in good],
        "specie_name": [b["specie_name"] for b in good],
        "path": [b["path"] for b in good],
        "errors": errors,
    }


def make_loader(
    dataset: AnomalyDataset,
    batch_size: int = 8,
    *,
    num_workers: int = 0,
    shuffle: bool = False,
    **kwargs: Any,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` using :func:`collate_samples` (extra kwargs passed on)."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        collate_fn=collate_samples,
        **kwargs,
    )
