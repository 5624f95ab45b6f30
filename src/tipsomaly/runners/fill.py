"""Filling a class's prediction store: the rows it lacks computed and stored, then every
sample's row read back (keys and files: :mod:`.store`).

Untiled, a row holds the network's outputs at model resolution S: ``global_probs_cls1`` /
``global_probs_cls2`` (2,) and ``patch_probs`` (N, 2) [normal, abnormal] probabilities; maps
and the ROI are applied when the metrics are computed (:mod:`.row_metrics`).

Tiled (``tile``), each test image is predicted tile by tile as ``predict --tile`` does (the
:class:`~tipsomaly.method.pipeline.Predictor`, with the image's ROI), and its row stores what
the metrics need at S: ``patch_probs`` (S², 1) holds the blended map resized to S × S, and
``global_probs_cls1`` / ``global_probs_cls2`` hold the pair (the tiles' highest CLS evidence,
the map's maximum at full resolution), whose sum is the image score. Such rows are smoothed
already, so the store key adds the tiling and ``sigma`` (and the ROI, which decides the tiles
scored). A row takes 4·S² bytes (1 MiB at 518).

Both ways, a sample whose image is stored under another label or mask reuses the stored
outputs (no network), and every row is built by one function (:func:`_row`) and stored in
parts of at most ``batch_size`` rows.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..data.meta import Sample
from ..data.roi import RoiLookup
from .store import FIELDS, ClassPredictions, PredictionStore, StoredClass, sample_keys

if TYPE_CHECKING:
    from ..method.detector import Detector
    from .config import EvalConfig

logger = logging.getLogger(__name__)

__all__ = ["NETWORK_OUTPUTS", "ClassRows", "StoreFiller", "log_todo"]

NETWORK_OUTPUTS = ("global_probs_cls1", "global_probs_cls2", "patch_probs")

Keys = list[tuple[str, str] | None]
#: computed samples: each one's position and its row, or why it has none
Group = list[tuple[int, dict[str, np.ndarray] | str]]


@dataclass
class ClassRows:
    """One class's samples in a store: their ``(key, pred_key)`` (None: unreadable, never
    stored) and the rows stored for it."""

    store: PredictionStore
    class_name: str
    samples: Sequence[Sample]
    keys: Keys
    stored: StoredClass


class StoreFiller:
    """Computes and stores the rows of one dataset's classes (see the module doc).

    ``detector`` builds (or returns) the detector, called only when an image must go through
    the network; ``rois`` the dataset's ROI lookup (tiled rows are scored with their ROI).
    :attr:`network_images` counts the images that went through the network.
    """

    def __init__(
        self, settings: EvalConfig, detector: Callable[[], Detector], rois: RoiLookup, progress=True
    ) -> None:
        self.settings, self.detector, self.rois, self.progress = settings, detector, rois, progress
        self.network_images = 0

    def predictions(
        self,
        store: PredictionStore,
        class_name: str,
        samples: Sequence[Sample],
        before_compute: Callable[[], bool] | None = None,
    ) -> ClassPredictions:
        """Every sample's stored row, computing those the store lacks (:meth:`open`); the
        store is then consolidated to the current samples' rows."""
        c, todo = self.open(store, class_name, samples, before_compute)
        errors: dict[int, str] = {}
        unkeyed: dict[int, dict[str, np.ndarray]] = {}
        if todo:
            log_todo(class_name, len(todo), len(samples))
            errors, unkeyed = self.compute(c, todo)
        paths = [str(s.image_path) for s in samples]
        failed_keys = {c.keys[i][0]: m for i, m in errors.items() if c.keys[i] is not None}
        index, rows = [], []
        for i, k in enumerate(c.keys):
            if i in errors:
                continue
            if k is not None and k[0] in failed_keys:  # a duplicate of a failed sample
                errors[i] = failed_keys[k[0]]
                continue
            row = unkeyed.get(i) if k is None else c.stored.rows.get(k[0])
            if row is None:  # cannot happen: every sample was stored, computed or failed
                errors[i] = f"{paths[i]}: no prediction was computed"
                continue
            index.append(i)
            rows.append(row)
        store.finish_class(class_name, [k[0] for k in c.keys if k is not None])
        arrays = {"index": np.array(index, dtype=np.int64)}
        for name, dtype in FIELDS.items():
            stacked = np.stack([r[name] for r in rows]) if rows else np.zeros((0,), dtype)
            arrays[name] = stacked.astype(dtype, copy=False)
        return ClassPredictions(arrays, errors, paths)

    def open(
        self,
        store: PredictionStore,
        class_name: str,
        samples: Sequence[Sample],
        before_compute: Callable[[], bool] | None = None,
    ) -> tuple[ClassRows, list[int]]:
        """A class's keys and stored rows (the store cleaned of leftovers and damaged files),
        and the positions to compute: the unkeyed samples and the first of each key not
        stored. ``before_compute`` runs once if any is to be computed; True means it dropped
        the stored rows (all are computed)."""
        keys: Keys = []
        for s in samples:
            try:
                keys.append(sample_keys(class_name, s.image_path, s.anomaly, s.mask_path))
            except OSError:  # unreadable: the loader says why
                keys.append(None)
        c = ClassRows(store, class_name, samples, keys, store.open_class(class_name))
        todo = _missing(keys, c.stored)
        if todo and before_compute is not None and before_compute():
            c.stored = store.open_class(class_name)
            todo = _missing(keys, c.stored)
        return c, todo

    def compute(
        self, c: ClassRows, todo: list[int]
    ) -> tuple[dict[int, str], dict[int, dict[str, np.ndarray]]]:
        """Compute the ``todo`` samples' rows and store every finite one; return why the
        others have none (position → message) and the rows of unkeyed samples (not stored)."""
        from tqdm.auto import tqdm

        errors: dict[int, str] = {}
        unkeyed: dict[int, dict[str, np.ndarray]] = {}
        groups = self._tiled(c, todo) if self.settings.tile is not None else self._untiled(c, todo)
        total = len(c.samples)
        bar = tqdm(total=total, initial=total - len(todo), desc=c.class_name, unit="img",
                   disable=not self.progress, leave=False)  # fmt: skip
        with bar:
            for group in groups:
                good_keys, good_rows = [], []
                for i, row in group:
                    if isinstance(row, str):
                        errors[i] = row
                    elif not all(np.isfinite(row[k]).all() for k in NETWORK_OUTPUTS):
                        errors[i] = _not_finite(c.samples[i].image_path)
                        logger.warning("%s", errors[i])
                    elif c.keys[i] is None:
                        unkeyed[i] = row
                    else:
                        good_keys.append(c.keys[i])
                        good_rows.append(row)
                if good_rows:
                    arrays = {k: np.stack([r[k] for r in good_rows]) for k in FIELDS}
                    c.store.add(c.class_name, good_keys, arrays)
                    keys, pred_keys = zip(*good_keys, strict=True)
                    c.stored.add_rows(
                        {**arrays, "key": np.array(keys), "pred_key": np.array(pred_keys)}
                    )
                bar.update(len(group))
        return errors, unkeyed

    # -- the two ways to a row --------------------------------------------------------------
    def _untiled(self, c: ClassRows, todo: list[int]) -> Iterator[Group]:
        """The ``todo`` samples' rows, one group per batch of the image loader."""
        from torch.utils.data import DataLoader

        from ..data.dataset import AnomalyDataset, collate_samples
        from ..tips.runtime import resolve_device

        s = self.settings
        try:
            on_gpu = resolve_device(s.device).type == "cuda"
        except ValueError:
            on_gpu = False
        loader = DataLoader(
            AnomalyDataset([c.samples[i] for i in todo], s.image_size, max_pixels=s.max_pixels),
            batch_size=s.batch_size,
            num_workers=s.workers,
            collate_fn=collate_samples,
            pin_memory=on_gpu,
        )
        for batch in loader:
            group: Group = [(todo[e["index"]], e["error"]) for e in batch["errors"]]
            positions = [todo[p] for p in batch["index"].tolist()]
            if positions:
                n = len(positions)
                outputs = self._outputs(c, positions, batch["image"])
                masks = batch["mask"].numpy().reshape(n, s.image_size**2) > 0.5
                packed = np.packbits(masks, axis=1).reshape(n, -1)
                labels, has_mask = batch["label"].numpy(), batch["has_mask"].numpy()
                hw = batch["original_hw"].numpy().reshape(n, 2)
                group += [
                    (i, _row(outputs[j], labels[j], has_mask[j], hw[j], packed[j]))
                    for j, i in enumerate(positions)
                ]
            yield group

    def _outputs(self, c: ClassRows, positions: list[int], images: Any) -> list[Any]:
        """The network outputs of a batch's (n, 3, S, S) images: the stored ones of an image
        stored under another label or mask, else the network's."""
        outputs = [c.stored.by_pred.get(c.keys[i][1]) if c.keys[i] else None for i in positions]
        need = [j for j, row in enumerate(outputs) if row is None]
        if need:
            scores = self.detector().score_batch(images[need], [c.class_name] * len(need))
            self.network_images += len(need)
            computed = {k: getattr(scores, k).float().cpu().numpy() for k in NETWORK_OUTPUTS}
            for m, j in enumerate(need):
                outputs[j] = {k: computed[k][m] for k in NETWORK_OUTPUTS}
        return outputs

    def _tiled(self, c: ClassRows, todo: list[int]) -> Iterator[Group]:
        """The ``todo`` samples' rows, predicted by the tiling detector with their ROI, in
        groups of ``batch_size``."""
        known = {i: c.stored.by_pred.get(c.keys[i][1]) if c.keys[i] else None for i in todo}
        need = [c.samples[i].image_path for i in todo if known[i] is None]
        rois = [self.rois.source(path) for path in need]  # RoiError: stop
        extra = {"roi": rois} if self.rois.active else {}
        predictions = iter(())
        if need:
            predictions = self.detector().iter_predict(
                [str(p) for p in need], c.class_name, on_error="record", **extra
            )
        step = self.settings.batch_size
        for start in range(0, len(todo), step):
            chunk = todo[start : start + step]
            yield [(i, self._tiled_row(c.samples[i], known[i], predictions)) for i in chunk]

    def _tiled_row(
        self, sample: Sample, row: dict[str, np.ndarray] | None, predictions: Iterator[Any]
    ) -> dict[str, np.ndarray] | str:
        """One sample's tiled row: from its stored one (new label or mask), else from the next
        prediction; or why it has none."""
        from ..data.images import ImageLoadError, load_mask
        from ..method.prediction import NON_FINITE

        size = self.settings.image_size
        if row is None:
            pred = next(predictions)
            self.network_images += 1
            if not pred.ok or pred.evidence is None or pred.anomaly_map is None:
                reason = pred.error or "no prediction"
                error = (
                    _not_finite(sample.image_path)
                    if reason == NON_FINITE
                    else str(ImageLoadError(sample.image_path, reason))
                )
                logger.warning("%s", error)
                return error
            ev = pred.evidence
            row = {
                "global_probs_cls1": np.array([ev["global_cls1"], ev["local"]]),
                "global_probs_cls2": np.array([ev["global_cls2"], ev["local"]]),
                "patch_probs": np.asarray(pred.anomaly_map).reshape(size * size, 1),
                "original_hw": np.asarray(pred.original_size),
            }
        has_mask = sample.anomaly == 1 and sample.mask_path is not None
        try:
            mask = load_mask(sample.mask_path if has_mask else None, size)
        except ImageLoadError as exc:
            logger.warning("%s", exc)
            return str(exc)
        packed = np.packbits(mask.numpy().reshape(1, -1) > 0.5, axis=1)[0]
        return _row(row, sample.anomaly, has_mask, row["original_hw"], packed)


def log_todo(class_name: str, todo: int, total: int, note: str = "") -> None:
    """Say how many of a class's images are computed (``note``: how, e.g. shared out)."""
    stored = total - todo
    logger.info(
        "class %s: %d of %d images to compute (%d stored)%s", class_name, todo, total, stored, note
    )


def _row(
    outputs: dict[str, Any], label: Any, has_mask: Any, original_hw: Any, masks_packed: Any
) -> dict[str, np.ndarray]:
    """A stored row (:data:`~.store.FIELDS`): the network outputs, the ground truth (label,
    whether a mask was read, the bit-packed (ceil(S²/8),) mask) and the original (H, W)."""
    row = {k: np.asarray(outputs[k], dtype=FIELDS[k]) for k in NETWORK_OUTPUTS}
    row.update(
        label=np.asarray(label, FIELDS["label"]),
        has_mask=np.asarray(has_mask, FIELDS["has_mask"]),
        original_hw=np.asarray(original_hw, FIELDS["original_hw"]),
        masks_packed=np.asarray(masks_packed, FIELDS["masks_packed"]),
    )
    return row


def _not_finite(path: Any) -> str:
    return f"{path}: the network's output is not finite (NaN or inf); left out"


def _missing(keys: Keys, stored: StoredClass) -> list[int]:
    """Positions of the samples to compute: unkeyed ones, and the first of each key not stored."""
    todo, queued = [], set()
    for i, k in enumerate(keys):
        if k is None:
            todo.append(i)
        elif k[0] not in stored.rows and k[0] not in queued:
            todo.append(i)
            queued.add(k[0])
    return todo
