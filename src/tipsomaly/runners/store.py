"""On-disk store of per-image predictions, so evaluation resumes and metric-only reruns are free.

Layout: ``<root>/<class>/`` holds ``samples.json`` (the class's image paths, in order) and
``part-NNNNN.npz`` files, one per computed batch, written atomically; a finished class is
consolidated into ``<root>/<class>.npz``. Only network outputs are stored (global and patch
probabilities, small), plus the resized ground-truth masks bit-packed; anomaly maps are rebuilt
from the patch probabilities at metric time, so changing ``sigma`` needs no network either.
Everything is read with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

FIELDS = {
    # name: dtype of the stored array (first axis = images)
    "index": np.int64,
    "label": np.int8,
    "has_mask": np.bool_,
    "original_hw": np.int32,
    "global_probs_cls1": np.float32,
    "global_probs_cls2": np.float32,
    "patch_probs": np.float32,
    "masks_packed": np.uint8,
}


@dataclass
class ClassPredictions:
    """Everything stored for one class, rows sorted by sample index.

    ``patch_probs`` (n, N, 2), ``global_probs_cls*`` (n, 2), ``masks_packed`` (n, ceil(S²/8))
    bit-packed masks at model resolution; ``errors`` maps failed sample indices to messages.
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


def _atomic_savez(path: Path, **arrays: np.ndarray) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _safe_name(name: str) -> str:
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    if cleaned != name:
        cleaned += "-" + hashlib.sha1(name.encode()).hexdigest()[:8]
    return cleaned


class PredictionStore:
    """Predictions of one configuration on one dataset, class by class."""

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def _class_dir(self, class_name: str) -> Path:
        return self.root / _safe_name(class_name)

    def _final(self, class_name: str) -> Path:
        return self.root / f"{_safe_name(class_name)}.npz"

    def is_complete(self, class_name: str) -> bool:
        """True once :meth:`finish_class` has consolidated the class."""
        return self._final(class_name).exists()

    def begin_class(self, class_name: str, paths: list[str]) -> set[int]:
        """Start or resume a class; returns the sample indices already done (or failed).

        Stored predictions made for a different list of images are discarded.
        """
        final = self._final(class_name)
        directory = self._class_dir(class_name)
        if final.exists():
            stored = self._read_npz(final)
            if list(stored["paths"]) == paths:
                return set(range(len(paths)))
            log.warning("the images of class %s changed: recomputing its predictions", class_name)
            final.unlink()
        listing = directory / "samples.json"
        if directory.exists():
            try:
                same = json.loads(listing.read_text()) == paths
            except (OSError, ValueError):
                same = False
            if not same:
                log.warning("discarding stale partial predictions of class %s", class_name)
                shutil.rmtree(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if not listing.exists():
            listing.write_text(json.dumps(paths))
        done: set[int] = set()
        for part in sorted(directory.glob("part-*.npz")):
            try:
                data = self._read_npz(part)
            except (OSError, ValueError) as exc:  # a part cut by a crash: drop it
                log.warning("ignoring unreadable %s (%s)", part, exc)
                part.unlink()
                continue
            done.update(int(i) for i in data["index"])
            done.update(int(i) for i in data["error_index"])
        if done:
            log.info(
                "class %s: resuming, %d of %d images already done",
                class_name,
                len(done),
                len(paths),
            )
        return done

    def add(self, class_name: str, arrays: dict[str, np.ndarray], errors: dict[int, str]) -> None:
        """Store one computed batch (rows of ``arrays``) and its failed samples, atomically."""
        directory = self._class_dir(class_name)
        missing = set(FIELDS) - set(arrays)
        if missing:
            raise ValueError(f"missing prediction fields: {sorted(missing)}")
        n = len(list(directory.glob("part-*.npz")))
        payload = {k: np.asarray(arrays[k], dtype=FIELDS[k]) for k in FIELDS}
        payload["error_index"] = np.array(sorted(errors), dtype=np.int64)
        payload["error_message"] = np.array([errors[i] for i in sorted(errors)], dtype=np.str_)
        _atomic_savez(directory / f"part-{n:05d}.npz", **payload)

    def finish_class(self, class_name: str) -> ClassPredictions:
        """Consolidate a class's parts into one file and return its predictions."""
        directory = self._class_dir(class_name)
        paths = json.loads((directory / "samples.json").read_text())
        parts = [self._read_npz(p) for p in sorted(directory.glob("part-*.npz"))]
        merged: dict[str, np.ndarray] = {}
        for key, dtype in FIELDS.items():
            chunks = [p[key] for p in parts if p[key].shape[0]]
            merged[key] = np.concatenate(chunks) if chunks else np.zeros((0,), dtype)
        order = np.argsort(merged["index"], kind="stable")
        merged = {k: v[order] if v.shape[0] else v for k, v in merged.items()}
        errors = {
            int(i): str(m)
            for p in parts
            for i, m in zip(p["error_index"], p["error_message"], strict=True)
        }
        _atomic_savez(
            self._final(class_name),
            paths=np.array(paths, dtype=np.str_),
            error_index=np.array(sorted(errors), dtype=np.int64),
            error_message=np.array([errors[i] for i in sorted(errors)], dtype=np.str_),
            **merged,
        )
        shutil.rmtree(directory)
        return self.load_class(class_name)

    def load_class(self, class_name: str) -> ClassPredictions:
        data = self._read_npz(self._final(class_name))
        errors = {
            int(i): str(m) for i, m in zip(data["error_index"], data["error_message"], strict=True)
        }
        arrays = {k: data[k] for k in FIELDS}
        return ClassPredictions(arrays, errors, [str(p) for p in data["paths"]])

    @staticmethod
    def _read_npz(path: Path) -> dict[str, np.ndarray]:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}


def config_key(config: dict) -> str:
    """A short stable hash of the settings that determine the network's outputs."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
