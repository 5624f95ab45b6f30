"""``tipsomaly eval``: predictions stored as they are computed, then per-class metrics and tables.

The network runs only for images the prediction store lacks, so an interrupted run resumes
where it stopped and a rerun that changes only metric options (``aupro``, ``sigma``, ``cls``)
never loads the model.

Few-shot protocol (``shots`` K > 0, as WinCLIP and AnomalyDINO report it for K = 1, 2, 4): for
each class, K normal images of the dataset's own ``train`` split (:func:`draw_shots`, a
deterministic draw from ``shot_seed``) are fitted into a
:class:`~tipsomaly.method.profile.Profile` (a bank, no thresholds), and the class's test images
are scored against it in ``mode`` (default ``fused``); metrics and tables are the zero-shot
ones. A class with fewer than K train normal images is skipped (warned, and named in
:attr:`EvalResult.few_shot`); a dataset where no class can be evaluated so (no train split, as
in the ``folder`` layout) is a :class:`FewShotError`. Few-shot predictions are stored apart:
the store key adds shots, seed and mode, and each class's rows live under a key of its
references' bytes, beside a record of the bank's digest (:func:`bank_digest`); a class whose
bank comes out different when it is fitted again has its rows computed again.

Tiles (``tile``): each test image is predicted tile by tile as ``predict --tile`` does
(:class:`~tipsomaly.method.detector.Detector`), and its row stores what the metrics need at
model resolution S: ``patch_probs`` (S², 1) holds the blended map resized to S × S, and
``global_probs_cls1`` / ``global_probs_cls2`` hold the pair (the tiles' highest CLS evidence,
the map's maximum at full resolution), whose sum is the image score. Such rows are smoothed
already, so the store key adds the tiling and ``sigma`` (and the ROI, which decides the tiles
scored); masks and metrics stay at S, as without tiles. A row takes 4·S² bytes (1 MiB at 518).

Regions of interest (``roi`` / ``roi_dir``): maps are 0 outside the ROI, image scores take
only ROI evidence (the detector's rule: untiled, the patch cells at least half inside the ROI;
tiled, applied while predicting), and pixels outside the ROI are left out of the pixel metrics
(:func:`roi_pixel_metrics`: exact, as if the images held only their ROI's pixels). Untiled, the
ROI is applied to the stored network outputs when the metrics are computed, so it is not in
the store key and changing it runs no network.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import platform
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import __version__, fingerprint
from ..data.dataset import AnomalyDataset, collate_samples
from ..data.meta import MetaError, Sample, meta_path_for, parse_split, read_meta
from ..data.names import display_path
from ..data.roi import RoiError, describe_missing, find_roi, fit_roi, load_roi, roi_cells
from ..errors import OutputError, TipsomalyError
from ..identity import model_id, spec_id
from ..method.config import AUTO, default_pixel_prompts
from ..method.detector import Detector
from ..method.maps import anomaly_maps
from ..method.prediction import NON_FINITE
from ..metrics import aupro_mvtec, aupro_zsad, image_metrics, pixel_metrics, ranking_metrics
from ..metrics.regions import foreground_components
from ..report.results import (
    INDUSTRIAL,
    MEDICAL,
    TABLE_METRICS,
    DatasetResult,
    domain_of,
)
from ..tips.runtime import resolve_device, resolve_dtype
from . import distributed
from .config import EvalConfig, EvalSettings
from .distributed import DistInfo
from .lock import OutputLock
from .store import (
    FIELDS,
    ClassPredictions,
    PredictionStore,
    StoredClass,
    config_key,
    sample_keys,
)

logger = logging.getLogger(__name__)

NETWORK_OUTPUTS = ("global_probs_cls1", "global_probs_cls2", "patch_probs")

__all__ = [
    "INDUSTRIAL",
    "MEDICAL",
    "TABLE_METRICS",
    "DatasetResult",
    "EvalConfig",
    "EvalResult",
    "EvalSettings",
    "Evaluator",
    "FewShotError",
    "ShotDraw",
    "bank_digest",
    "class_metrics",
    "domain_of",
    "draw_shots",
    "environment",
    "evaluate_datasets",
    "prediction_config",
    "protocol_pixel_prompts",
    "roi_pixel_metrics",
]

#: the file beside a few-shot class's stored rows that records its bank's digest
BANK_RECORD = "bank.json"


class FewShotError(TipsomalyError, ValueError):
    """``shots`` cannot be honoured for a dataset (no train split, too few normal images)."""


@dataclasses.dataclass
class EvalResult(DatasetResult):
    """A :class:`DatasetResult` plus, with ``shots``, what the few-shot protocol used.

    ``few_shot``: ``{"shots", "shot_seed", "mode", "classes": {class: {"references": [paths
    relative to the root, in draw order], "bank": digest}}, "skipped": {class: reason}}``;
    None in zero-shot.
    """

    few_shot: dict | None = None


@dataclasses.dataclass(frozen=True)
class ShotDraw:
    """The reference images of a dataset's classes under the few-shot protocol.

    ``references``: class → its K train normal samples, in draw order; ``skipped``: class →
    why it cannot be evaluated with K references (fewer train normal images than K).
    """

    references: dict[str, list[Sample]]
    skipped: dict[str, str]


def class_metrics(
    scores_cls1: np.ndarray,
    scores_cls2: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    aupro: str = "zsad",
    valid: np.ndarray | None = None,
) -> dict[str, float]:
    """Metrics of one class: image metrics for both CLS tokens, pixel metrics when masks exist.

    scores_cls*: (n,) image scores; labels: (n,) 0/1; maps, masks: (n, S, S) or None;
    valid: (n, S, S) bool, the pixels the pixel metrics count (an ROI), or None for all.
    Keys as in golden.json: ``image_auroc_cls1`` … ``image_f1-max_cls2``, ``pixel_auroc``,
    ``pixel_ap``, ``pixel_aupro``, ``pixel_f1-max``.
    """
    out: dict[str, float] = {}
    for tag, scores in (("cls1", scores_cls1), ("cls2", scores_cls2)):
        for name, value in image_metrics(scores, labels).items():
            out[f"{name}_{tag}"] = value
    if maps is not None and masks is not None:
        if valid is None:
            out.update(pixel_metrics(maps, masks, aupro=aupro))
        else:
            out.update(roi_pixel_metrics(maps, masks, valid, aupro=aupro))
    return out


def roi_pixel_metrics(
    maps: np.ndarray, masks: np.ndarray, valid: np.ndarray, aupro: str = "zsad"
) -> dict[str, float]:
    """:func:`~tipsomaly.metrics.pixel_metrics` over the ``valid`` pixels only, exactly.

    AUROC, AP and F1-max rank the valid pixels' scores. AUPRO needs each defect region's
    pixels (the 8-connected regions of ``masks & valid``: the parts of defects inside the
    ROI) and the normal pixels' scores, not where the normal pixels are; so the valid pixels
    are laid out in one row, each region a run of its own pixels with a normal pixel between
    two regions, which the metrics label as the same regions, and that row is evaluated. It
    needs as many normal pixels as regions less one (else AUPRO is NaN, warned).

    maps, masks, valid: (n, H, W); returns the :func:`pixel_metrics` keys.
    """
    maps = np.asarray(maps)
    masks = np.asarray(masks).astype(bool)
    valid = np.asarray(valid).astype(bool)
    if not maps.shape == masks.shape == valid.shape:
        raise ValueError(f"maps {maps.shape}, masks {masks.shape}, valid {valid.shape} differ")
    scores = maps[valid]
    labels = masks[valid]
    ranked = ranking_metrics(scores, labels)
    out = {
        "pixel_auroc": ranked["auroc"],
        "pixel_ap": ranked["ap"],
        "pixel_aupro": float("nan"),
        "pixel_f1-max": ranked["f1-max"],
    }
    inside = masks & valid
    component, count = foreground_components(inside)
    normal = scores[~labels]
    if count and normal.size >= count - 1:
        values = maps[inside]  # scan order, as ``component``
        order = np.argsort(component, kind="stable")
        sizes = np.bincount(component, minlength=count)
        # row: region 0, normal 0, region 1, normal 1, ..., region R-1, remaining normals
        row = np.empty(scores.size, dtype=scores.dtype)
        truth = np.zeros(scores.size, dtype=bool)
        at = 0
        starts = np.concatenate(([0], np.cumsum(sizes)))
        for r in range(count):
            k = int(sizes[r])
            row[at : at + k] = values[order[starts[r] : starts[r] + k]]
            truth[at : at + k] = True
            at += k
            if r < count - 1:
                row[at] = normal[r]
                at += 1
        row[at:] = normal[count - 1 :] if count else normal
        metric = aupro_zsad if aupro == "zsad" else aupro_mvtec
        out["pixel_aupro"] = metric(row[None, None], truth[None, None])
    elif count:
        logger.warning(
            "AUPRO over the ROI is undefined: %d defect regions but %d normal pixels",
            count,
            normal.size,
        )
    else:  # no region: the metrics' own NaN and warning
        out["pixel_aupro"] = pixel_metrics(scores[None, None], labels[None, None], aupro=aupro)[
            "pixel_aupro"
        ]
    return out


def prediction_config(settings: EvalConfig) -> dict:
    """The settings that change the network's outputs (not sigma, cls or aupro).

    Files are identified by a digest of their bytes: the model's weights (for a model
    directory, every file in it and every file its ``model.json`` names, also outside it),
    the pixel prompts and the prompt file. ``dtype`` is the resolved one (``auto`` → the
    dtype this machine would use). With ``shots`` > 0, ``few_shot`` adds shots, seed and the
    scoring mode (each class's references are keyed below it, see :class:`Evaluator`);
    zero-shot settings give the keys they always gave.
    """
    config = {
        "model": model_id(settings.model),
        "pixel_prompts": spec_id(settings.pixel_prompts) if settings.pixel_prompts else None,
        "prompt_type": settings.prompt_type,
        "prompt_file": spec_id(settings.prompt_file) if settings.prompt_file else None,
        "image_size": settings.image_size,
        "dtype": _resolved_dtype(settings.dtype, settings.device),
    }
    if settings.shots:  # zero-shot keys stay as they were: existing stores still resume
        config["few_shot"] = {
            "shots": settings.shots,
            "shot_seed": settings.shot_seed,
            "mode": settings.scoring_mode,
        }
    if settings.tile is not None:  # untiled keys stay as they were
        # tiled rows hold smoothed maps, and the ROI decides which tiles are scored
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
    try:
        return str(resolve_dtype(dtype, resolve_device(device))).removeprefix("torch.")
    except (ValueError, RuntimeError):  # reported when the model is built, if it ever is
        return str(dtype)


class Evaluator:
    """Evaluates datasets with one configuration, building the detector only when needed.

    :meth:`evaluate` holds the output folder's lock (:class:`~tipsomaly.runners.lock.OutputLock`)
    unless ``locked=True`` says the caller holds it already. ``settings.pixel_prompts="auto"``
    is resolved for each dataset evaluated (:func:`default_pixel_prompts`).
    """

    def __init__(
        self,
        settings: EvalConfig,
        out_dir: str | os.PathLike,
        *,
        progress: bool = True,
        detector_factory: Callable[[], Detector] | None = None,
        shared_models: dict | None = None,
        locked: bool = False,
    ) -> None:
        self.requested = settings  # pixel_prompts "auto" is resolved per dataset
        self.settings = settings.for_dataset()
        self.out_dir = Path(out_dir)
        self.progress = progress
        self._factory = detector_factory or self._build_detector
        self._detector: Detector | None = None
        self.shared_models = shared_models  # model spec → loaded TipsModel, across evaluators
        self.locked = locked
        self.network_images = 0  # images that went through the network in this object
        self._roi: np.ndarray | None = None  # settings.roi, read once
        self._roi_listings: dict = {}  # settings.roi_dir's folders, each listed once
        self._root = Path(".")  # the dataset being evaluated (roi_dir names are relative to it)
        self._resized: set = set()  # (ROI shape, image shape) pairs already noted

    def roi_source(self, image_path: str | os.PathLike) -> np.ndarray | Path | None:
        """Where a test image's ROI is: ``roi`` (read once, (h, w) bool), its mask file in
        ``roi_dir``, or None without either.

        ``roi_dir`` masks are ``<roi_dir>/<path relative to the dataset root, no
        extension>.<ext>``, else ``<roi_dir>/<file stem>.<ext>``.

        Raises:
            RoiError: no mask for the image (or several), or an ``roi`` that cannot be read.
        """
        s = self.settings
        if s.roi is not None:
            if self._roi is None:
                self._roi = _read_roi(s.roi)
            return self._roi
        if s.roi_dir is None:
            return None
        path = Path(image_path)
        names = [str(Path(_relative(path, self._root)).with_suffix("")), path.stem]
        found = find_roi(s.roi_dir, names, self._roi_listings)
        if found is None:
            raise RoiError(f"{display_path(path)}: {describe_missing(s.roi_dir, names)}")
        return found

    def roi_of(self, image_path: str | os.PathLike, image_hw: tuple[int, int]) -> np.ndarray:
        """A test image's ROI at its size ((H, W) bool; resized with a note when the mask's
        size differs), for images with an ROI source (:meth:`roi_source`).

        Raises:
            RoiError: see :meth:`roi_source`; a mask that cannot be read or is empty.
        """
        source = self.roi_source(image_path)
        assert source is not None
        roi = source if isinstance(source, np.ndarray) else _read_roi(source)
        fitted, resized = fit_roi(roi, image_hw)
        if resized and (roi.shape, tuple(image_hw)) not in self._resized:
            self._resized.add((roi.shape, tuple(image_hw)))
            logger.warning(
                "ROI mask of %dx%d px resized to the %dx%d image %s (w x h)",
                roi.shape[1],
                roi.shape[0],
                image_hw[1],
                image_hw[0],
                display_path(Path(image_path)),
            )
        return fitted

    def _build_detector(self) -> Detector:
        s = self.settings
        model = self.shared_models.get(s.model) if self.shared_models is not None else None
        detector = Detector.from_config(s, model=model)
        if self.shared_models is not None:
            self.shared_models[s.model] = detector.model
        return detector

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            logger.info("loading the model (%s)", self.settings.model)
            self._detector = self._factory()
        return self._detector

    @property
    def device(self) -> str:
        """The device the network runs on (``cpu``, ``cuda:0``): the built detector's, else the
        one the settings resolve to."""
        if self._detector is not None:
            device = torch.device(self._detector.device)
        else:
            try:
                device = resolve_device(self.settings.device)
            except ValueError:
                return str(self.settings.device)
        if device.type == "cuda" and device.index is None:
            device = torch.device("cuda", torch.cuda.current_device())
        return str(device)

    def store_for(self, dataset_name: str) -> PredictionStore:
        key = config_key(prediction_config(self.settings))
        return PredictionStore(self.out_dir / dataset_name / "predictions" / key)

    @staticmethod
    def references_store(
        store: PredictionStore, class_name: str, references: Sequence[Sample]
    ) -> PredictionStore:
        """Where one class's few-shot rows live: below ``store`` (keyed on shots, seed and
        mode), under a key of the class name and its references' bytes, in draw order.

        Raises:
            OSError: a reference image cannot be read.
        """
        digests = [fingerprint.file_digest(s.image_path) for s in references]
        key = fingerprint.digest(["references", class_name, digests], 16)
        return PredictionStore(store.root / f"references-{key}")

    def evaluate(self, root: str | os.PathLike, name: str | None = None) -> EvalResult:
        """Predict what is missing, then compute every class's metrics, one class at a time.

        With ``shots``, each class is scored against its references (see the module doc);
        :attr:`EvalResult.few_shot` records them and the classes skipped.

        Raises:
            FewShotError: with ``shots``, no class of the dataset has enough train normal
                images.
            OutputLockedError: another run writes into the output folder.
            OutputError: the prediction store cannot be written.
        """
        if self.locked:
            return self._evaluate(root, name)
        with OutputLock(self.out_dir):
            return self._evaluate(root, name)

    def _evaluate(self, root: str | os.PathLike, name: str | None) -> EvalResult:
        root = Path(root)
        name = name or root.resolve().name
        self._root = root
        own = self.requested.for_dataset(name)
        if own != self.settings:  # "auto" picks other prompts for this dataset
            self.settings, self._detector = own, None
        meta = read_meta(
            root, "test", self.settings.classes, allow_outside_root=self.settings.allow_outside_root
        )
        s = self.settings
        draw = None
        if s.shots:
            draw = draw_shots(
                root,
                meta.classes,
                s.shots,
                s.shot_seed,
                name=name,
                allow_outside_root=s.allow_outside_root,
            )
        store = self.store_for(name)
        result = EvalResult(name=name, root=str(root), classes={}, counts={}, aupro=s.aupro)
        if draw is not None:
            result.few_shot = {
                "shots": s.shots,
                "shot_seed": s.shot_seed,
                "mode": s.scoring_mode,
                "classes": {},
                "skipped": {},
            }
        for class_name, samples in meta.samples.items():
            if draw is None:
                predictions = self._predict_class(store, class_name, samples)
            else:
                try:
                    predictions, bank = self._predict_few_shot(store, class_name, samples, draw)
                except _Skip as skip:
                    logger.warning("%s: class %s skipped: %s", name, class_name, skip.reason)
                    result.few_shot["skipped"][class_name] = skip.reason
                    continue
                result.few_shot["classes"][class_name] = {
                    "references": [
                        _relative(r.image_path, meta.root) for r in draw.references[class_name]
                    ],
                    "bank": bank,
                }
            result.counts[class_name] = {
                "images": len(samples),
                "evaluated": len(predictions),
                "anomalous": int(predictions.arrays["label"].sum()),
                "failed": len(predictions.errors),
            }
            for index, message in sorted(predictions.errors.items()):
                result.errors.append(
                    {"class": class_name, "path": predictions.paths[index], "error": message}
                )
            result.classes[class_name] = self._metrics(class_name, predictions)
        result.device = self.device
        return result

    # -- few-shot -------------------------------------------------------------------------
    def _predict_few_shot(
        self, store: PredictionStore, class_name: str, samples, draw: ShotDraw
    ) -> tuple[ClassPredictions, str | None]:
        """:meth:`_predict_class` against the class's references: its rows, its bank digest.

        The rows are kept only beside a record of the bank they were scored against; the bank
        is fitted only when some image must be computed, and when it differs from the record
        (other references' numbers) every row of the class is computed again.

        Raises:
            _Skip: the class has no K usable references.
        """
        class_store, before_compute, state = self._few_shot_setup(store, class_name, draw)
        predictions = self._predict_class(class_store, class_name, samples, before_compute)
        return predictions, state["bank"]

    def _few_shot_setup(
        self, store: PredictionStore, class_name: str, draw: ShotDraw
    ) -> tuple[PredictionStore, Callable[[], bool], dict]:
        """The class's references store (rows of an unrecorded bank dropped), the
        ``before_compute`` hook that fits the references and drops rows of another bank, and
        the state whose ``"bank"`` it updates.

        Raises:
            _Skip: the class has no K usable references.
        """
        if class_name in draw.skipped:
            raise _Skip(draw.skipped[class_name])
        references = draw.references[class_name]
        try:
            class_store = self.references_store(store, class_name, references)
        except OSError as exc:
            raise _Skip(f"a reference image cannot be read ({exc.strerror or exc})") from None
        recorded = _read_bank_record(class_store.root)
        if recorded is None and class_store.root.exists():  # rows of an unknown bank
            _drop(class_store.root)
        state = {"bank": recorded}

        def before_compute() -> bool:
            """Fit the references and score against them; True: the stored rows are stale."""
            bank = self._use_references(class_name, references)
            stale = recorded is not None and recorded != bank
            if stale:
                logger.warning(
                    "class %s: the references give another bank than the stored predictions "
                    "were scored against (%s, now %s); computing the class again",
                    class_name,
                    recorded[:12],
                    bank[:12],
                )
                _drop(class_store.root)
            if stale or recorded is None:
                _write_bank_record(class_store.root, class_name, references, bank)
            state["bank"] = bank
            return stale

        return class_store, before_compute, state

    def _use_references(self, class_name: str, references: Sequence[Sample]) -> str:
        """Fit the class's profile (a bank, no thresholds), set it on the detector in the
        settings' mode; return its :func:`bank_digest`."""
        from ..method.fitting import fit_profile
        from ..method.profile import ProfileError

        detector = self.detector
        paths = [str(r.image_path) for r in references]
        logger.info(
            "class %s: %d reference image(s) (seed %d): %s",
            class_name,
            len(paths),
            self.settings.shot_seed,
            ", ".join(paths),
        )
        try:
            profile = fit_profile(detector, paths, class_name, calibrate=False, on_error="record")
        except ProfileError as exc:
            raise _Skip(str(exc)) from None
        failed = profile.info.get("references", {}).get("errors", [])
        if failed:
            first = failed[0]
            raise _Skip(
                f"{len(failed)} of its {len(paths)} reference image(s) cannot be read "
                f"({first['path']}: {first['error']})"
            )
        detector.set_profiles([profile], self.settings.scoring_mode)
        return bank_digest(profile)

    # -- several processes (torchrun) ------------------------------------------------------
    def compute_shard(
        self, root: str | os.PathLike, name: str | None, info: DistInfo, offset: int = 0
    ) -> int:
        """This rank's share of the predictions a dataset's stores lack (no metrics).

        Class by class, rank 0 plans (:meth:`_plan_shard`: the store cleaned, the missing
        samples and their keys; with ``shots``, the references fitted and their bank checked
        against the record) and broadcasts the plan; then every rank computes the missing
        samples ``j`` with ``(offset + j) % world_size == rank`` and stores them as part files
        of unique names. The work list runs on over classes and datasets (``offset`` in, the
        new offset out), so the ranks' shares differ by at most one image. Failed and
        unreadable images are left to rank 0's evaluation afterwards, which reports them as
        one process does.

        Raises:
            DistributedError: the ranks read different image lists, or lost each other.
        """
        root = Path(root)
        name = name or root.resolve().name
        self._root = root
        own = self.requested.for_dataset(name)
        if own != self.settings:
            self.settings, self._detector = own, None
        s = self.settings
        meta = read_meta(root, "test", s.classes, allow_outside_root=s.allow_outside_root)
        info.check_same(
            [(c, [str(x.image_path) for x in xs]) for c, xs in meta.samples.items()],
            f"the test images of {name}",
        )
        draw = None
        if s.shots and info.is_main:
            draw = draw_shots(
                root,
                meta.classes,
                s.shots,
                s.shot_seed,
                name=name,
                allow_outside_root=s.allow_outside_root,
            )
        store = self.store_for(name)
        for class_name, samples in meta.samples.items():
            plan = self._plan_shard(store, class_name, samples, draw) if info.is_main else None
            plan = info.broadcast(plan, f"planning class {class_name} of {name}")
            if plan is None:
                continue
            mine = [i for j, i in enumerate(plan.todo) if info.owns(j, offset)]
            offset += len(plan.todo)
            if not mine:
                continue
            keys: list[tuple[str, str] | None] = [None] * len(samples)
            for i, key in zip(plan.todo, plan.keys, strict=True):
                keys[i] = key
            class_store = PredictionStore(plan.store)
            if plan.profile is not None:
                self.detector.set_profiles([plan.profile], s.scoring_mode)
            stored = class_store.open_class(class_name, clean=False)  # others write it too
            self._compute(class_store, stored, class_name, samples, keys, mine, {}, {})
        return offset

    def _plan_shard(
        self, store: PredictionStore, class_name: str, samples, draw: ShotDraw | None
    ) -> _ShardPlan | None:
        """Rank 0's plan of one class for :meth:`compute_shard`; None: nothing to share out
        (a class the few-shot protocol skips: rank 0's evaluation says why)."""
        class_store, before_compute = store, None
        try:
            if draw is not None:
                class_store, before_compute, _ = self._few_shot_setup(store, class_name, draw)
            _, keys, _, todo = self._plan(class_store, class_name, samples, before_compute)
        except _Skip:
            return None
        todo = [i for i in todo if keys[i] is not None]  # unreadable ones: rank 0 reports them
        profile = None
        if todo and draw is not None:  # fitted by before_compute: share it, not refit it
            profile = self.detector.profiles[class_name]
            if next(profile.bank.buffers()).device.type != "cpu":
                profile = copy.deepcopy(profile)
                profile.bank.to("cpu")
        if todo:
            logger.info(
                "class %s: %d of %d images to compute (%d stored), shared out",
                class_name,
                len(todo),
                len(samples),
                len(samples) - len(todo),
            )
        return _ShardPlan(str(class_store.root), todo, [keys[i] for i in todo], profile)

    # -- prediction -----------------------------------------------------------------------
    def _predict_class(
        self,
        store: PredictionStore,
        class_name: str,
        samples,
        before_compute: Callable[[], bool] | None = None,
    ) -> ClassPredictions:
        """Every sample's stored row, computing those the store lacks (see runners.store).

        ``before_compute`` runs once before any image is computed; True means the stored rows
        were dropped (all are computed).
        """
        paths, keys, stored, todo = self._plan(store, class_name, samples, before_compute)
        errors: dict[int, str] = {}
        unkeyed: dict[int, dict[str, np.ndarray]] = {}
        if todo:
            logger.info(
                "class %s: %d of %d images to compute (%d stored)",
                class_name,
                len(todo),
                len(samples),
                len(samples) - len(todo),
            )
            self._compute(store, stored, class_name, samples, keys, todo, errors, unkeyed)
        failed_keys = {keys[i][0]: m for i, m in errors.items() if keys[i] is not None}
        index, rows = [], []
        for i, k in enumerate(keys):
            if i in errors:
                continue
            if k is not None and k[0] in failed_keys:  # a duplicate of a failed sample
                errors[i] = failed_keys[k[0]]
                continue
            row = unkeyed.get(i) if k is None else stored.rows.get(k[0])
            if row is None:  # cannot happen: every sample was stored, computed or failed
                errors[i] = f"{paths[i]}: no prediction was computed"
                continue
            index.append(i)
            rows.append(row)
        store.finish_class(class_name, [k[0] for k in keys if k is not None])
        arrays = {"index": np.array(index, dtype=np.int64)}
        for field_name, dtype in FIELDS.items():
            arrays[field_name] = (
                np.stack([r[field_name] for r in rows]).astype(dtype, copy=False)
                if rows
                else np.zeros((0,), dtype)
            )
        return ClassPredictions(arrays, errors, paths)

    def _plan(
        self,
        store: PredictionStore,
        class_name: str,
        samples,
        before_compute: Callable[[], bool] | None = None,
    ) -> tuple[list[str], list[tuple[str, str] | None], StoredClass, list[int]]:
        """A class's image paths, sample keys (None: unreadable), stored rows (the store
        cleaned of leftovers and damaged files) and the positions to compute."""
        paths = [str(s.image_path) for s in samples]
        keys: list[tuple[str, str] | None] = []
        for s in samples:
            try:
                keys.append(sample_keys(class_name, s.image_path, s.anomaly, s.mask_path))
            except OSError:  # unreadable: the loader says why; never stored
                keys.append(None)
        stored = store.open_class(class_name)
        todo = _missing(keys, stored)
        if todo and before_compute is not None and before_compute():
            stored = store.open_class(class_name)
            todo = _missing(keys, stored)
        return paths, keys, stored, todo

    def _compute(
        self,
        store: PredictionStore,
        stored: StoredClass,
        class_name: str,
        samples,
        keys: list[tuple[str, str] | None],
        todo: list[int],
        errors: dict[int, str],
        unkeyed: dict[int, dict[str, np.ndarray]],
    ) -> None:
        """Load the ``todo`` samples; run the network on those whose image is not stored (the
        others changed only their label or mask); store every finite row."""
        if self.settings.tile is not None:
            self._compute_tiled(store, stored, class_name, samples, keys, todo, errors, unkeyed)
            return
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        size = self.settings.image_size
        try:
            on_gpu = resolve_device(self.settings.device).type == "cuda"
        except ValueError:
            on_gpu = False
        loader = DataLoader(
            AnomalyDataset([samples[i] for i in todo], size, max_pixels=self.settings.max_pixels),
            batch_size=self.settings.batch_size,
            num_workers=self.settings.workers,
            collate_fn=collate_samples,
            pin_memory=on_gpu,
        )
        total = len(samples)
        bar = tqdm(
            total=total,
            initial=total - len(todo),
            desc=class_name,
            unit="img",
            disable=not self.progress,
            leave=False,
        )
        with bar:
            for batch in loader:
                for e in batch["errors"]:
                    errors[todo[e["index"]]] = e["error"]
                positions = [todo[p] for p in batch["index"].tolist()]
                if positions:
                    self._store_batch(
                        store, stored, class_name, batch, positions, keys, errors, unkeyed
                    )
                bar.update(len(positions) + len(batch["errors"]))

    def _store_batch(
        self, store, stored, class_name, batch, positions, keys, errors, unkeyed
    ) -> None:
        n = len(positions)
        size = self.settings.image_size
        known = [stored.by_pred.get(keys[i][1]) if keys[i] is not None else None for i in positions]
        need = [j for j in range(n) if known[j] is None]
        outputs: dict[str, list] = {k: [None] * n for k in NETWORK_OUTPUTS}
        for j, row in enumerate(known):
            if row is not None:  # same image, new label or mask: no network
                for k in NETWORK_OUTPUTS:
                    outputs[k][j] = row[k]
        if need:
            detector = self.detector
            scores = detector.score_batch(batch["image"][need], [class_name] * len(need))
            self.network_images += len(need)
            computed = {
                "global_probs_cls1": scores.global_probs_cls1.float().cpu().numpy(),
                "global_probs_cls2": scores.global_probs_cls2.float().cpu().numpy(),
                "patch_probs": scores.patch_probs.float().cpu().numpy(),
            }
            for m, j in enumerate(need):
                for k in NETWORK_OUTPUTS:
                    outputs[k][j] = computed[k][m]
        masks = batch["mask"].numpy().reshape(n, size * size) > 0.5
        packed = np.packbits(masks, axis=1).reshape(n, -1)
        labels, has_mask = batch["label"].numpy(), batch["has_mask"].numpy()
        hw = batch["original_hw"].numpy().reshape(n, 2)
        good_keys, good_rows = [], []
        for j, i in enumerate(positions):
            if not all(np.isfinite(outputs[k][j]).all() for k in NETWORK_OUTPUTS):
                errors[i] = (
                    f"{batch['path'][j]}: the network's output is not finite (NaN or inf); left out"
                )
                logger.warning("%s", errors[i])
                continue
            row = {k: np.asarray(outputs[k][j], dtype=FIELDS[k]) for k in NETWORK_OUTPUTS}
            row.update(
                label=np.asarray(labels[j], FIELDS["label"]),
                has_mask=np.asarray(has_mask[j], FIELDS["has_mask"]),
                original_hw=np.asarray(hw[j], FIELDS["original_hw"]),
                masks_packed=packed[j],
            )
            if keys[i] is None:
                unkeyed[i] = row
            else:
                good_keys.append(keys[i])
                good_rows.append(row)
        if good_rows:
            arrays = {k: np.stack([r[k] for r in good_rows]) for k in FIELDS}
            store.add(class_name, good_keys, arrays)
            stored.add_rows(
                {
                    **arrays,
                    "key": np.array([k for k, _ in good_keys]),
                    "pred_key": np.array([p for _, p in good_keys]),
                }
            )

    def _compute_tiled(
        self,
        store: PredictionStore,
        stored: StoredClass,
        class_name: str,
        samples,
        keys: list[tuple[str, str] | None],
        todo: list[int],
        errors: dict[int, str],
        unkeyed: dict[int, dict[str, np.ndarray]],
    ) -> None:
        """:meth:`_compute` with tiles: each image predicted by the tiling detector (its ROI
        given), its row holding the map at S and (global, local) evidence pairs (module doc)."""
        from tqdm.auto import tqdm

        from ..data.images import ImageLoadError, load_mask

        size = self.settings.image_size
        known = {i: stored.by_pred.get(keys[i][1]) if keys[i] is not None else None for i in todo}
        need = [i for i in todo if known[i] is None]
        rois = {i: self.roi_source(samples[i].image_path) for i in need}  # RoiError: stop
        extra = (
            {"roi": [rois[i] for i in need]} if self.settings.roi or self.settings.roi_dir else {}
        )
        predictions = (
            self.detector.iter_predict(
                [str(samples[i].image_path) for i in need],
                class_name,
                on_error="record",
                **extra,
            )
            if need
            else iter(())
        )
        good_keys: list[tuple[str, str]] = []
        good_rows: list[dict[str, np.ndarray]] = []

        def flush() -> None:
            if not good_rows:
                return
            arrays = {k: np.stack([r[k] for r in good_rows]) for k in FIELDS}
            store.add(class_name, good_keys, arrays)
            stored.add_rows(
                {
                    **arrays,
                    "key": np.array([k for k, _ in good_keys]),
                    "pred_key": np.array([p for _, p in good_keys]),
                }
            )
            good_keys.clear()
            good_rows.clear()

        total = len(samples)
        bar = tqdm(
            total=total,
            initial=total - len(todo),
            desc=class_name,
            unit="img",
            disable=not self.progress,
            leave=False,
        )
        with bar:
            for i in todo:
                sample = samples[i]
                row = known[i]
                if row is None:
                    pred = next(predictions)
                    self.network_images += 1
                    if not pred.ok or pred.evidence is None or pred.anomaly_map is None:
                        reason = pred.error or "no prediction"
                        errors[i] = (
                            f"{sample.image_path}: the network's output is not finite (NaN or "
                            "inf); left out"
                            if reason == NON_FINITE
                            else str(ImageLoadError(sample.image_path, reason))
                        )
                        logger.warning("%s", errors[i])
                        bar.update(1)
                        continue
                    ev = pred.evidence
                    outputs = {
                        "global_probs_cls1": np.array([ev["global_cls1"], ev["local"]]),
                        "global_probs_cls2": np.array([ev["global_cls2"], ev["local"]]),
                        "patch_probs": np.asarray(pred.anomaly_map).reshape(size * size, 1),
                    }
                    hw = np.asarray(pred.original_size)
                else:  # same image, new label or mask: no network
                    outputs = {k: row[k] for k in NETWORK_OUTPUTS}
                    hw = row["original_hw"]
                has_mask = sample.anomaly == 1 and sample.mask_path is not None
                try:
                    mask = load_mask(sample.mask_path if has_mask else None, size)
                except ImageLoadError as exc:
                    errors[i] = str(exc)
                    logger.warning("%s", errors[i])
                    bar.update(1)
                    continue
                packed = np.packbits(mask.numpy().reshape(1, -1) > 0.5, axis=1)[0]
                new = {k: np.asarray(outputs[k], dtype=FIELDS[k]) for k in NETWORK_OUTPUTS}
                new.update(
                    label=np.asarray(sample.anomaly, FIELDS["label"]),
                    has_mask=np.asarray(has_mask, FIELDS["has_mask"]),
                    original_hw=np.asarray(hw, FIELDS["original_hw"]),
                    masks_packed=packed,
                )
                if keys[i] is None:
                    unkeyed[i] = new
                else:
                    good_keys.append(keys[i])
                    good_rows.append(new)
                    if len(good_rows) >= self.settings.batch_size:
                        flush()
                bar.update(1)
            flush()

    # -- metrics --------------------------------------------------------------------------
    def _metrics(self, class_name: str, predictions: ClassPredictions) -> dict[str, float]:
        a = predictions.arrays
        if len(predictions) == 0:
            logger.warning("class %s: no image could be evaluated", class_name)
            return {}
        from ..method.scoring import image_scores

        s = self.settings
        size = s.image_size
        n = len(predictions)
        tiled = s.tile is not None
        with_roi = s.roi is not None or s.roi_dir is not None
        patch = torch.from_numpy(a["patch_probs"])
        g1, g2 = a["global_probs_cls1"], a["global_probs_cls2"]
        if tiled:  # (global, local) pairs and maps at S (module doc)
            score1, score2 = g1.sum(axis=1), g2.sum(axis=1)
        else:
            score1 = image_scores(torch.from_numpy(g1), patch).numpy()
            score2 = image_scores(torch.from_numpy(g2), patch).numpy()
        valid = None
        if with_roi:
            grid = int(round(math.sqrt(patch.shape[1])))
            valid = np.empty((n, size, size), dtype=bool)
            for j, position in enumerate(a["index"]):
                roi = self.roi_of(predictions.paths[position], tuple(a["original_hw"][j]))
                valid[j], _ = fit_roi(roi, (size, size))
                if not tiled:  # the detector's rule: cells at least half inside the ROI
                    cells = torch.from_numpy(roi_cells(roi, (grid, grid)))
                    local = patch[j, cells, 1].max()
                    score1[j] = float(torch.from_numpy(g1[j, 1:2])[0] + local)
                    score2[j] = float(torch.from_numpy(g2[j, 1:2])[0] + local)
        maps = masks = None
        if a["has_mask"].any():
            if not a["has_mask"][a["label"] == 1].all():
                logger.warning(
                    "class %s: some anomalous images have no mask; their pixels count as normal",
                    class_name,
                )
            if tiled:
                maps = np.ascontiguousarray(a["patch_probs"][..., 0].reshape(n, size, size))
            else:
                maps = self.class_maps(patch)
            if valid is not None:
                maps[~valid] = 0.0
            masks = predictions.masks(size)
        return class_metrics(score1, score2, a["label"], maps, masks, aupro=s.aupro, valid=valid)

    def class_maps(self, patch_probs: torch.Tensor, chunk: int = 32) -> np.ndarray:
        """(n, S, S) float32 anomaly maps rebuilt from stored (n, N, 2) patch probabilities."""
        s = self.settings.image_size
        grid = int(round(math.sqrt(patch_probs.shape[1])))
        out = np.empty((patch_probs.shape[0], s, s), dtype=np.float32)
        for start in range(0, patch_probs.shape[0], chunk):
            part = patch_probs[start : start + chunk]
            out[start : start + part.shape[0]] = anomaly_maps(
                part, (grid, grid), (s, s), self.settings.sigma
            ).numpy()
        return out


def _missing(keys: list[tuple[str, str] | None], stored: StoredClass) -> list[int]:
    """Positions of the samples to compute: unkeyed ones, and the first of each key not stored."""
    todo, queued = [], set()
    for i, k in enumerate(keys):
        if k is None:
            todo.append(i)
        elif k[0] not in stored.rows and k[0] not in queued:
            todo.append(i)
            queued.add(k[0])
    return todo


@dataclasses.dataclass
class _ShardPlan:
    """One class's work for the ranks: its store folder, the positions of the samples to
    compute, their ``(key, pred_key)``, and the fitted profile with ``shots`` (on the CPU)."""

    store: str
    todo: list[int]
    keys: list[tuple[str, str]]
    profile: Any = None


class _Skip(Exception):
    """A class that cannot be evaluated under the few-shot protocol (``reason``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _read_roi(path: str | os.PathLike) -> np.ndarray:
    """An ROI mask file, read; :class:`RoiError` when unreadable or without a white pixel."""
    from ..data.images import ImageLoadError

    try:
        roi = load_roi(path)
    except ImageLoadError as exc:
        raise RoiError(f"ROI mask: {exc}") from None
    if not roi.any():
        raise RoiError(f"ROI mask {display_path(Path(path))} has no white pixel")
    return roi


def bank_digest(profile) -> str:
    """:func:`~tipsomaly.method.profile.profile_digest` of a profile without ``sigma`` and
    ``cls`` in its identity: they shape maps and pick the printed token, not the stored
    outputs, so changing them keeps reusing the stored predictions."""
    from ..method.profile import profile_digest

    identity = {k: v for k, v in profile.identity.items() if k not in ("sigma", "cls")}
    return profile_digest(dataclasses.replace(profile, identity=identity))


def _read_bank_record(folder: Path) -> str | None:
    """The bank digest recorded in ``folder`` (None: no readable record)."""
    try:
        record = json.loads((folder / BANK_RECORD).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    bank = record.get("bank") if isinstance(record, dict) else None
    return bank if isinstance(bank, str) else None


def _write_bank_record(
    folder: Path, class_name: str, references: Sequence[Sample], bank: str
) -> None:
    record = {
        "class": class_name,
        "references": [str(r.image_path) for r in references],
        "bank": bank,
    }
    path = folder / BANK_RECORD
    tmp = folder / f".{BANK_RECORD}.tmp"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(path, exc) from None


def _drop(folder: Path) -> None:
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise OutputError(folder, exc) from None


# -- the few-shot draw ---------------------------------------------------------------------------
#: layouts whose builders put every image in the test split (named in the error)
_TEST_ONLY_LAYOUTS = ("folder", "ksdd", "medical")


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _rank(seed: int, class_name: str, relative: str) -> str:
    text = f"{seed}\n{class_name}\n{relative}".encode("utf-8", "surrogateescape")
    return hashlib.sha256(text).hexdigest()


def draw_shots(
    root: str | os.PathLike,
    classes: Sequence[str],
    shots: int,
    seed: int,
    *,
    name: str | None = None,
    allow_outside_root: bool = False,
) -> ShotDraw:
    """Each class's ``shots`` reference images: normal images (``anomaly`` 0) of the dataset's
    ``train`` split, drawn deterministically from ``seed``.

    The draw ranks a class's train normal images by the SHA-256 of (seed, class, path relative
    to the root) and takes the first ``shots``: it depends on nothing else (not on the file
    order, the other classes or the machine), and the K = 1 references of a seed are among its
    K = 2 ones, and so on. A class with fewer than ``shots`` train normal images is in
    ``skipped``.

    Raises:
        FewShotError: no class can be drawn (no train split, as in the ``folder`` layout, or
            too few normal images everywhere).
        MetaError: ``meta.json``'s train entries of these classes are invalid.
    """
    from ..data.meta import _load_json  # the checked reader of read_meta

    root = Path(root)
    name = name or root.resolve().name
    path = meta_path_for(root)
    data = _load_json(path)
    split = None
    if isinstance(data, dict):
        folded = [k for k in data if isinstance(k, str) and k.lower() == "train"]
        split = "train" if "train" in data else folded[0] if len(folded) == 1 else None
    by_class = data.get(split) if split is not None else None
    if split is not None and not isinstance(by_class, dict):
        raise MetaError(path, f"split {split!r} must map class names to lists")
    present = [c for c in classes if by_class and c in by_class]
    train: dict[str, list[Sample]] = {}
    if present:  # the entries of these classes, checked as read_meta checks the test split
        train = parse_split(
            data,
            path.parent,
            split or "train",
            present,
            allow_empty=True,
            source=path,
            allow_outside_root=allow_outside_root,
        ).samples
    references: dict[str, list[Sample]] = {}
    skipped: dict[str, str] = {}
    found: dict[str, int] = {}
    for cls in classes:
        normal = {s.image_path: s for s in train.get(cls, []) if s.anomaly == 0}
        found[cls] = len(normal)
        if len(normal) < shots:
            skipped[cls] = (
                f"only {len(normal)} normal image(s) in the train split, {shots} needed"
                if normal
                else "no normal image in the train split"
            )
            continue
        ranked = sorted(
            normal.values(), key=lambda s: _rank(seed, cls, _relative(s.image_path, path.parent))
        )
        references[cls] = ranked[:shots]
    if references:
        return ShotDraw(references, skipped)
    if not any(found.values()):
        layout = _layout_note(path.parent)
        raise FewShotError(
            f"dataset {name}: --shots {shots} draws each class's reference images from the "
            f"dataset's train split, but {display_path(path)} lists no normal train "
            f'image{layout}; give it a train split (normal images under "train" in meta.json, '
            "as the mvtec, visa and dagm layouts write) or evaluate without --shots"
        )
    most = max(found.values())
    raise FewShotError(
        f"dataset {name}: --shots {shots} needs {shots} normal train images per class, but no "
        f"class has that many (at most {most}); use --shots {most} or fewer"
    )


def _layout_note(root: Path) -> str:
    from ..data.layouts import detect_layout

    try:
        layout = detect_layout(root)
    except Exception:  # noqa: BLE001 - only a hint in a message
        return ""
    if layout in _TEST_ONLY_LAYOUTS:
        return f" (layout {layout}: it has no train split, every image is a test image)"
    return f" (layout {layout})"


#: the paper's cross-dataset choice of learned prompts, kept under its former name
protocol_pixel_prompts = default_pixel_prompts


def evaluate_datasets(
    roots: Sequence[str | os.PathLike],
    settings: EvalConfig,
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    lock: bool = True,
) -> list[EvalResult]:
    """Evaluate several datasets with one model (loaded at most once).

    ``settings.pixel_prompts == "auto"`` applies :func:`default_pixel_prompts` per dataset.
    ``lock``: hold ``out_dir``'s :class:`~tipsomaly.runners.lock.OutputLock` meanwhile (False
    when the caller holds it, e.g. to write the result files under the same lock).

    With ``settings.shots``, every dataset's reference images are drawn first, so that one
    without a train split stops the run before any model is loaded.

    Under ``torchrun`` (:func:`~.distributed.init_if_needed` joined the job): every rank
    computes its share of the missing predictions (:meth:`Evaluator.compute_shard`) and waits
    for the others; then rank 0 alone evaluates as one process does, reading them from the
    stores (so its results are those of one process), and the other ranks return ``[]``.
    ``lock`` then means rank 0 holds the lock for the job (:func:`~.distributed.output_lock`).

    Raises:
        OutputLockedError: another run writes into ``out_dir``.
        FewShotError: with ``shots``, a dataset none of whose classes has enough train normal
            images (raised before anything is computed).
        DistributedError: under torchrun, the processes lost each other (one died or hangs).
    """
    info = distributed.current()
    if lock:
        with distributed.output_lock(out_dir, info):
            return evaluate_datasets(roots, settings, out_dir, progress=progress, lock=False)
    if settings.shots:
        for root in roots:
            meta = read_meta(
                root, "test", settings.classes, allow_outside_root=settings.allow_outside_root
            )
            draw_shots(
                root,
                meta.classes,
                settings.shots,
                settings.shot_seed,
                name=Path(root).resolve().name,
                allow_outside_root=settings.allow_outside_root,
            )
    models: dict = {}
    if info.active:
        try:
            offset = 0
            for root in roots:
                name = Path(root).resolve().name
                evaluator = Evaluator(
                    settings.for_dataset(name),
                    out_dir,
                    progress=progress and info.is_main,
                    shared_models=models,
                    locked=True,
                )
                offset = evaluator.compute_shard(root, name, info, offset)
            info.barrier("waiting for the other processes' predictions")
        except distributed.DistributedError as exc:
            raise distributed.DistributedError(
                f"{exc}. The predictions stored so far are kept: run the same command again, "
                "with any number of processes, to resume"
            ) from None
        if not info.is_main:
            return []
    results = []
    for root in roots:
        name = Path(root).resolve().name
        own = settings.for_dataset(name)
        if settings.pixel_prompts == AUTO:
            chosen = own.pixel_prompts
            logger.info("%s: pixel prompts %s", name, chosen or "none (fixed prompts for patches)")
        evaluator = Evaluator(own, out_dir, progress=progress, shared_models=models, locked=True)
        results.append(evaluator.evaluate(root, name))
    return results


def environment() -> dict[str, str]:
    """Versions that a result depends on, for the record."""
    import numpy

    return {
        "tipsomaly": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
