"""Frozen-backbone patch features (and S×S masks) computed once: in memory, on disk, or live.

Training the pixel prompts never changes the vision tower, so every image's final-norm patch
tokens (N, D) can be computed once and reused every step and every epoch. Three stores share
one interface, :meth:`FeatureStore.get` → ``(patches (B, N, D), masks (B, S, S) bool)``:

* :class:`MemoryFeatures` — every sample's features in one CPU tensor (``cache_dtype``).
* :class:`DiskFeatures` — one ``.safetensors`` file per image under
  ``<dir>/<model key>/<image key>.safetensors``. The model key names the backbone (name, width,
  a fingerprint of its weights), the image size, the backbone dtype and the cache dtype; the
  image key hashes the bytes of the image and of its mask, and the label
  (:func:`tipsomaly.fingerprint.file_digest`), so an edited file is recomputed and files are
  shared by every run that uses the same images, wherever they lie.
* :class:`LiveFeatures` — no cache: images are read and the backbone runs at every ``get``
  (for comparison and for data that do not fit anywhere).

Unreadable images are logged and left out of the cached stores (the live store drops them
from the batch they fall in).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .. import fingerprint
from ..data.dataset import AnomalyDataset, collate_samples, make_loader
from ..data.images import DEFAULT_MAX_PIXELS, MaxPixels
from ..data.meta import Sample
from ..errors import TipsomalyError
from ..files import atomic_path
from ..tips.model import TipsModel

logger = logging.getLogger(__name__)

CACHE_DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
#: part of every image key: version 2 keys on file contents (version 1 keyed on path, size and
#: mtime, so its files are never found again and are recomputed)
FORMAT = "tipsomaly-features-2"


def model_fingerprint(model: TipsModel) -> str:
    """A short id of the backbone's weights.

    The loader's fingerprint of the weight files when there is one (``model.fingerprint``),
    else :func:`~tipsomaly.fingerprint.tensors_digest` of the vision tower (a model built in
    memory).
    """
    recorded = getattr(model, "fingerprint", None)
    if recorded:
        return str(recorded)[:16]
    return fingerprint.tensors_digest(model.vision.state_dict(), 16)


def model_key(model: TipsModel, image_size: int, cache_dtype: str) -> str:
    """Folder name of a backbone's cached features: name, width, fingerprint, sizes, dtypes."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", model.name) or "model"
    model_dtype = str(model.compute_dtype).replace("torch.", "")
    return (
        f"{name}-d{model.embed_dim}-{model_fingerprint(model)}-s{image_size}"
        f"-{model_dtype}-cache_{cache_dtype}"
    )


def sample_key(sample: Sample) -> str:
    """The id of one sample's features: a digest of :data:`FORMAT`, the SHA-256 of the image's
    bytes, of the mask's bytes (anomalous samples only) and the label.

    Raises:
        OSError: the image or the mask cannot be read.
    """
    mask = sample.mask_path if sample.anomaly == 1 else None
    parts = [
        FORMAT,
        fingerprint.file_digest(sample.image_path),
        fingerprint.file_digest(mask) if mask is not None else None,
        int(sample.anomaly),
    ]
    return fingerprint.digest(parts, 24)


class FeatureCacheError(TipsomalyError, ValueError):
    """A cached feature file cannot be read while training."""


class FeatureStore:
    """Patch features and masks of ``samples`` (the usable ones), addressed by position."""

    samples: list[Sample]
    image_size: int

    def __len__(self) -> int:
        return len(self.samples)

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``indices`` → (patches (B, N, D) in the cache dtype, masks (B, S, S) bool)."""
        raise NotImplementedError

    @property
    def class_names(self) -> list[str]:
        return [s.class_name for s in self.samples]


class MemoryFeatures(FeatureStore):
    """Everything in two CPU tensors: patches (M, N, D) and masks (M, S, S) bool."""

    def __init__(
        self, samples: list[Sample], patches: torch.Tensor, masks: torch.Tensor, image_size: int
    ) -> None:
        self.samples, self.patches, self.masks = samples, patches, masks
        self.image_size = image_size

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return self.patches[index], self.masks[index]


class DiskFeatures(FeatureStore):
    """One ``.safetensors`` file per image (tensors ``patches`` (N, D), ``mask`` (S, S) bool)."""

    def __init__(self, samples: list[Sample], files: list[Path], image_size: int) -> None:
        self.samples, self.files, self.image_size = samples, files, image_size

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        from safetensors.torch import load_file

        loaded = []
        for i in indices:
            try:
                loaded.append(load_file(str(self.files[i])))
            except Exception as exc:  # noqa: BLE001 - changed or damaged since it was checked
                raise FeatureCacheError(
                    f"{self.files[i]} became unreadable during training ({exc}); delete it and "
                    "run again (it will be recomputed)"
                ) from None
        return (
            torch.stack([d["patches"] for d in loaded]),
            torch.stack([d["mask"] for d in loaded]),
        )


class LiveFeatures(FeatureStore):
    """No cache: read the images and run the backbone at every :meth:`get`."""

    def __init__(
        self, model: TipsModel, samples: list[Sample], image_size: int, max_pixels: MaxPixels
    ) -> None:
        self.model, self.samples, self.image_size = model, samples, image_size
        self.dataset = AnomalyDataset(samples, image_size, max_pixels=max_pixels)

    def get(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        batch = collate_samples([self.dataset[i] for i in indices])
        for err in batch["errors"]:
            logger.warning("left out of this batch: %s", err["error"])
        with torch.no_grad():
            patches = self.model.encode_image(batch["image"]).patches.float().cpu()
        return patches, batch["mask"] > 0.5


def _encode_all(
    model: TipsModel,
    samples: list[Sample],
    image_size: int,
    batch_size: int,
    progress: bool,
    desc: str,
    max_pixels: MaxPixels,
):
    """Yield (sample position, patches (N, D) fp32 CPU, mask (S, S) bool) for readable samples
    (an image over ``max_pixels`` pixels is not readable: left out, warned)."""
    dataset = AnomalyDataset(samples, image_size, max_pixels=max_pixels)
    loader = make_loader(dataset, batch_size=batch_size)
    with tqdm(total=len(samples), desc=desc, unit="img", disable=not progress) as bar:
        for batch in loader:
            for err in batch["errors"]:
                logger.warning("left out of training: %s", err["error"])
            if batch["image"].shape[0]:
                with torch.no_grad():
                    patches = model.encode_image(batch["image"]).patches.float().cpu()
                masks = batch["mask"] > 0.5
                for k, index in enumerate(batch["index"].tolist()):
                    yield index, patches[k], masks[k]
            bar.update(len(batch["path"]) + len(batch["errors"]))


def _valid_file(
    path: Path, n_patches: int | None, image_size: int, dtype: torch.dtype | None = None
) -> bool:
    """Whether a cached feature file holds (N, D) ``dtype`` patches and an (S, S) bool mask."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            if set(f.keys()) != {"patches", "mask"}:
                return False
            mask, patches = f.get_slice("mask"), f.get_slice("patches")
            mask_shape, patch_shape = tuple(mask.get_shape()), tuple(patches.get_shape())
            dtypes = (patches.get_dtype(), mask.get_dtype())
    except Exception:  # noqa: BLE001 - any unreadable file is simply recomputed
        return False
    wanted = {torch.float32: "F32", torch.float16: "F16"}.get(dtype) if dtype else None
    return (
        mask_shape == (image_size, image_size)
        and len(patch_shape) == 2
        and (n_patches is None or patch_shape[0] == n_patches)
        and dtypes[1] == "BOOL"
        and (wanted is None or dtypes[0] == wanted)
    )


def build_features(
    model: TipsModel,
    samples: Sequence[Sample],
    image_size: int,
    *,
    cache: str | os.PathLike = "memory",
    cache_dtype: str = "fp32",
    batch_size: int = 8,
    progress: bool = True,
    desc: str = "features",
    max_pixels: MaxPixels = DEFAULT_MAX_PIXELS,
) -> FeatureStore:
    """The feature store of ``samples`` for a frozen ``model`` at ``image_size``.

    Args:
        cache: ``"memory"``, ``"none"`` (:class:`LiveFeatures`) or a directory
            (:class:`DiskFeatures`; files already there for the same model, size, dtype and
            unchanged image files are reused).
        cache_dtype: ``"fp32"`` or ``"fp16"`` (half the memory/disk; the training loss then
            sees features rounded to fp16).
        batch_size: images per backbone forward pass while filling the cache.
        max_pixels: images over this many pixels are left out (warned); None: no limit.
    """
    if cache_dtype not in CACHE_DTYPES:
        raise ValueError(f"cache_dtype must be one of {list(CACHE_DTYPES)}, got {cache_dtype!r}")
    dtype = CACHE_DTYPES[cache_dtype]
    samples = list(samples)
    if str(cache) == "none":
        return LiveFeatures(model, samples, image_size, max_pixels)

    def encode(todo: list[Sample]) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        return _encode_all(model, todo, image_size, batch_size, progress, desc, max_pixels)

    if str(cache) == "memory":
        return _build_memory(model, samples, image_size, dtype, encode)
    return _build_disk(model, samples, image_size, Path(cache), dtype, cache_dtype, encode)


#: :func:`_encode_all` of some samples (the build's other arguments fixed)
Encode = Callable[[list[Sample]], Iterator[tuple[int, torch.Tensor, torch.Tensor]]]


def _build_memory(
    model: TipsModel, samples: list[Sample], image_size: int, dtype: torch.dtype, encode: Encode
) -> MemoryFeatures:
    n = len(samples)
    grid = image_size // model.patch_size
    patches = torch.empty(n, grid * grid, model.embed_dim, dtype=dtype)  # filled in place
    masks = torch.zeros(n, image_size, image_size, dtype=torch.bool)
    kept: list[int] = []
    for index, p, m in encode(samples):
        patches[index] = p
        masks[index] = m
        kept.append(index)
    if not kept:
        raise ValueError("no readable image: nothing to train on")
    if len(kept) < n:  # leave the unreadable ones out
        rows = torch.tensor(kept)
        patches, masks = patches[rows], masks[rows]
    return MemoryFeatures([samples[i] for i in kept], patches, masks, image_size)


def _build_disk(
    model: TipsModel,
    samples: list[Sample],
    image_size: int,
    root: Path,
    dtype: torch.dtype,
    cache_dtype: str,
    encode: Encode,
) -> DiskFeatures:
    from safetensors.torch import save_file

    folder = root / model_key(model, image_size, cache_dtype)
    folder.mkdir(parents=True, exist_ok=True)
    n_patches = (image_size // model.patch_size) ** 2
    files = [_feature_file(folder, s) for s in samples]
    missing = [
        i
        for i, f in enumerate(files)
        if f is not None and not _valid_file(f, n_patches, image_size, dtype)
    ]
    readable = {i for i, f in enumerate(files) if f is not None} - set(missing)
    logger.info(
        "feature cache %s: %d of %d images cached, computing %d",
        folder,
        len(readable),
        len(samples),
        len(missing),
    )
    for k, p, m in encode([samples[i] for i in missing]):
        index = missing[k]
        path = files[index]
        assert path is not None  # samples without a file are never computed
        meta = {"format": FORMAT, "image": str(samples[index].image_path)}
        with atomic_path(path) as tmp:
            save_file({"patches": p.to(dtype).contiguous(), "mask": m.contiguous()}, str(tmp), meta)
        readable.add(index)
    order = sorted(readable)
    if not order:
        raise ValueError("no readable image: nothing to train on")
    return DiskFeatures([samples[i] for i in order], [files[i] for i in order], image_size)


def _feature_file(folder: Path, sample: Sample) -> Path | None:
    """Where ``sample``'s features are cached, or None (logged) when its files cannot be read."""
    try:
        return folder / f"{sample_key(sample)}.safetensors"
    except OSError as exc:
        logger.warning("left out of training: %s (%s)", sample.image_path, exc)
        return None
