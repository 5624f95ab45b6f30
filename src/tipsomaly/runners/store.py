"""On-disk store of per-image predictions, keyed on content, so evaluation resumes and
metric-only reruns are free, and nothing stored can go stale.

Keys. The store of one configuration lives under ``predictions/<config key>/``; the config key
(:func:`store_key`) hashes the settings that change the network's outputs
(:func:`prediction_config`), with every file among them (model weights, also those
``model.json`` names outside its folder, pixel prompts, prompt file, ROI masks when tiled)
identified by a digest of its bytes. Rows scored against references (drawn few-shot
references, given profiles) live in a store below it (:func:`sub_store`). Inside a store,
every stored row carries two keys (:func:`sample_keys`):

* ``pred_key`` = (class name, SHA-256 of the image file's bytes): what the network saw;
* ``key`` = ``pred_key`` + (label, SHA-256 of the mask file's bytes): the whole row.

A sample whose ``key`` is stored is done; one whose ``pred_key`` alone is stored (its label or
mask changed) only has its ground truth read again, without the network; any other is computed.
Rows are never addressed by path or position, so a changed image, mask or label is recomputed
(only it), duplicates collapse, and a changed image list never mixes with an older one.

Layout: ``<root>/<class>/`` holds ``part-<unique>.npz`` files, one per computed batch, and
``store.npz``, the class's rows consolidated by :meth:`PredictionStore.finish_class`. Part
names are random (``uuid4``) and written under unique temporary names, so several processes
(the ranks of a ``torchrun`` job, :mod:`.distributed`) may add parts to one class at once; only
consolidating and cleaning need a single process (rank 0, once the others are done). Every
file is written to a temporary name and renamed into place; a file that cannot be read (for
any reason: truncated, not a zip, wrong fields, non-finite values) is deleted with a warning and
its rows are computed again. Only network outputs (global and patch probabilities), the original
size and the resized ground-truth masks (bit-packed) are stored; maps are rebuilt at metric
time. Failed images are not stored: they are tried again by every run. Everything is read with
``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import fingerprint
from ..errors import OutputError
from ..files import atomic_write
from ..identity import model_id, spec_id

if TYPE_CHECKING:
    from .config import EvalConfig

logger = logging.getLogger(__name__)

FORMAT = "tipsomaly-predictions-2"
STORE_NAME = "store.npz"

FIELDS = {
    # name: dtype of the stored array (first axis = rows)
    "label": np.int8,
    "has_mask": np.bool_,
    "original_hw": np.int32,
    "global_probs_cls1": np.float32,
    "global_probs_cls2": np.float32,
    "patch_probs": np.float32,
    "masks_packed": np.uint8,
}
KEY_FIELDS = ("key", "pred_key")


@dataclass
class ClassPredictions:
    """Everything known for one class's samples, rows in sample order.

    ``arrays``: ``index`` (n,) the sample positions evaluated, ``patch_probs`` (n, N, 2),
    ``global_probs_cls*`` (n, 2), ``label`` (n,), ``has_mask`` (n,), ``original_hw`` (n, 2),
    ``masks_packed`` (n, ceil(S²/8)) bit-packed masks at model resolution. ``errors`` maps the
    positions of failed samples to messages; ``paths`` lists every sample's image path.
    """

    arrays: dict[str, np.ndarray]
    errors: dict[int, str]
    paths: list[str]

    def __len__(self) -> int:
        return int(self.arrays["index"].shape[0])

    def masks(self, size: int) -> np.ndarray:
        """(n, S, S) bool masks at model resolution."""
        packed = self.arrays["masks_packed"]
        bits = np.unpackbits(packed, axis=1, count=size * size)
        return bits.reshape(-1, size, size).astype(bool)


# -- content keys (digests from tipsomaly.fingerprint) ----------------------------------------
def sample_keys(
    class_name: str, image_path: str | os.PathLike, label: int, mask_path: str | os.PathLike | None
) -> tuple[str, str]:
    """``(key, pred_key)`` of one sample (see the module doc); ``mask_path`` is used for
    anomalous samples only (normal images are scored against an all-zero mask).

    Raises:
        OSError: the image or mask file cannot be read.
    """
    image = fingerprint.file_digest(image_path)
    mask = fingerprint.file_digest(mask_path) if int(label) == 1 and mask_path is not None else None
    pred_key = fingerprint.digest([FORMAT, class_name, image], 32)
    return fingerprint.digest([FORMAT, class_name, image, int(label), mask], 32), pred_key


def config_key(config: dict) -> str:
    """A short stable hash of the settings that determine the network's outputs."""
    return fingerprint.digest([FORMAT, config], 16)


def store_key(settings: EvalConfig) -> str:
    """The folder name of the store of ``settings``: :func:`config_key` of
    :func:`prediction_config`."""
    return config_key(prediction_config(settings))


def prediction_config(settings: EvalConfig) -> dict[str, Any]:
    """The settings that change the network's outputs (not sigma, cls or aupro; see the module
    doc), ``dtype`` resolved on this machine. Tiled rows hold smoothed maps scored inside the
    ROI: ``tiling`` adds sigma and the ROI. Zero-shot untiled settings give the keys they always
    gave, so existing stores resume.
    """
    config: dict[str, Any] = {
        "model": model_id(settings.model),
        "pixel_prompts": spec_id(settings.pixel_prompts) if settings.pixel_prompts else None,
        "prompt_type": settings.prompt_type,
        "prompt_file": spec_id(settings.prompt_file) if settings.prompt_file else None,
        "image_size": settings.image_size,
        "dtype": _resolved_dtype(settings.dtype, settings.device),
    }
    if settings.engine != "torch":  # an exported engine's outputs differ (int8 most)
        config["engine"] = {"engine": settings.engine, "precision": settings.precision}
    if settings.shots:
        config["few_shot"] = {
            "shots": settings.shots,
            "shot_seed": settings.shot_seed,
            "mode": settings.scoring_mode,
        }
    if settings.tile is not None:
        config["tiling"] = {
            "tile": settings.tile,
            "overlap": settings.tile_overlap,
            "sigma": settings.sigma,
            "roi": roi_identity(settings),
        }
    return config


def roi_identity(settings: EvalConfig) -> str | None:
    """The ROI masks as an id: a file's path and digest, or a folder's and the digest of
    every image file below it; None without an ROI."""
    from ..data.images import is_image_file

    if settings.roi is not None:
        return spec_id(str(settings.roi))
    if settings.roi_dir is not None:
        root = Path(settings.roi_dir).resolve()
        files = [p for p in root.rglob("*") if p.is_file() and is_image_file(p)]
        return f"{root}#{fingerprint.files_digest(files)}"
    return None


def _resolved_dtype(dtype: str, device: str) -> str:
    from ..tips.runtime import resolve_device, resolve_dtype

    try:
        return str(resolve_dtype(dtype, resolve_device(device))).removeprefix("torch.")
    except (ValueError, RuntimeError):  # reported when the model is built, if it ever is
        return str(dtype)


def sub_store(store: PredictionStore, kind: str, *parts: Any) -> PredictionStore:
    """The store below ``store`` of rows scored against something more (``kind``: what,
    ``parts``: its identity, e.g. a class name and its references' digests):
    ``<store>/<kind>-<digest of kind and parts>``."""
    return PredictionStore(store.root / f"{kind}-{fingerprint.digest([kind, *parts], 16)}")


# -- files ------------------------------------------------------------------------------------
def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    atomic_write(path, lambda f: np.savez(f, **arrays))


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    if cleaned != name or cleaned.startswith("."):
        digest = hashlib.sha1(name.encode("utf-8", "surrogateescape")).hexdigest()[:8]
        cleaned = f"{cleaned.lstrip('.')}-{digest}"
    return cleaned


def _read_rows(path: Path) -> dict[str, np.ndarray]:
    """A part or store file's rows, checked: any problem raises."""
    with np.load(path, allow_pickle=False) as data:
        rows = {k: data[k] for k in (*KEY_FIELDS, *FIELDS)}
    n = rows["key"].shape[0]
    for name, value in rows.items():
        if value.shape[:1] != (n,):
            raise ValueError(f"{name} has {value.shape[:1]} rows, keys {n}")
    for name in KEY_FIELDS:
        if rows[name].dtype.kind != "U":
            raise ValueError(f"{name} is not text")
    for name in ("global_probs_cls1", "global_probs_cls2", "patch_probs"):
        if not np.isfinite(rows[name]).all():
            raise ValueError(f"{name} holds non-finite values")
    return {k: np.asarray(v, dtype=FIELDS[k]) if k in FIELDS else v for k, v in rows.items()}


class StoredClass:
    """The rows stored for one class, by ``key`` and by ``pred_key``."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, np.ndarray]] = {}
        self.by_pred: dict[str, dict[str, np.ndarray]] = {}

    def add_rows(self, rows: dict[str, np.ndarray]) -> None:
        for i, key in enumerate(rows["key"]):
            row = {k: rows[k][i] for k in FIELDS}
            row["pred_key"] = rows["pred_key"][i]
            self.rows[str(key)] = row
            self.by_pred[str(rows["pred_key"][i])] = row

    def __len__(self) -> int:
        return len(self.rows)


class PredictionStore:
    """Predictions of one configuration on one dataset, class by class (see the module doc)."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def _class_dir(self, class_name: str) -> Path:
        return self.root / _safe_name(class_name)

    def open_class(self, class_name: str, *, clean: bool = True) -> StoredClass:
        """Every readable row stored for ``class_name``; unreadable files are deleted (warned).

        ``clean=False`` reads only: leftover temporary files and unreadable files are left
        alone. That is how a process reads a class that other processes of its ``torchrun``
        job may be writing (their temporary files are theirs; their parts appear whole, by
        rename); the one that planned the class cleaned it before anyone wrote.
        """
        directory = self._class_dir(class_name)
        stored = StoredClass()
        if not directory.is_dir():
            return stored
        if clean:  # a writer killed mid-write (we hold the lock)
            for leftover in directory.glob(".*.tmp"):
                leftover.unlink(missing_ok=True)
        files = [directory / STORE_NAME] if (directory / STORE_NAME).exists() else []
        files += sorted(directory.glob("part-*.npz"))
        for path in files:
            try:
                rows = _read_rows(path)
            except Exception as exc:  # noqa: BLE001 - any unreadable file is recomputed
                if not clean:
                    logger.debug("class %s: skipping %s (%s)", class_name, path, exc)
                    continue
                logger.warning(
                    "class %s: dropping unreadable stored predictions %s (%s: %s); they are "
                    "computed again",
                    class_name,
                    path,
                    type(exc).__name__,
                    exc,
                )
                path.unlink(missing_ok=True)
                continue
            stored.add_rows(rows)
        return stored

    def add(self, class_name: str, keys: Sequence[tuple[str, str]], arrays: dict) -> None:
        """Store computed rows (``keys[i]`` = ``(key, pred_key)`` of row i) as a new part file
        with a unique name, atomically.

        Raises:
            OutputError: the store cannot be written (read-only or full disk).
        """
        missing = set(FIELDS) - set(arrays)
        if missing:
            raise ValueError(f"missing prediction fields: {sorted(missing)}")
        if not keys:
            return
        directory = self._class_dir(class_name)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(directory, exc) from None
        payload = {k: np.asarray(arrays[k], dtype=FIELDS[k]) for k in FIELDS}
        for k, v in payload.items():
            if v.shape[:1] != (len(keys),):
                raise ValueError(f"{k} has {v.shape[:1]} rows for {len(keys)} keys")
        payload["key"] = np.array([k for k, _ in keys], dtype=np.str_)
        payload["pred_key"] = np.array([p for _, p in keys], dtype=np.str_)
        name = f"part-{uuid.uuid4().hex}.npz"
        _atomic_savez(directory / name, **payload)

    def finish_class(self, class_name: str, keys: Sequence[str]) -> None:
        """Consolidate the class's rows for ``keys`` (the current samples') into one file,
        dropping parts and rows of samples that are no longer current."""
        directory = self._class_dir(class_name)
        stored = self.open_class(class_name)
        wanted = list(dict.fromkeys(k for k in keys if k in stored.rows))
        parts = sorted(directory.glob("part-*.npz")) if directory.is_dir() else []
        if not parts and len(wanted) == len(stored):
            return  # nothing new, nothing stale
        payload = {
            k: np.stack([stored.rows[key][k] for key in wanted])
            if wanted
            else np.zeros((0,), FIELDS[k])
            for k in FIELDS
        }
        payload["key"] = np.array(wanted, dtype=np.str_)
        payload["pred_key"] = np.array([stored.rows[k]["pred_key"] for k in wanted], np.str_)
        directory.mkdir(parents=True, exist_ok=True)
        _atomic_savez(directory / STORE_NAME, **payload)
        for part in parts:
            part.unlink(missing_ok=True)
