"""``tipsomaly eval``: predictions stored as they are computed, then per-class metrics and tables.

The network runs only for images the prediction store lacks (:mod:`.store`, filled by
:mod:`.fill`), so an interrupted run resumes where it stopped, and a rerun that changes only
metric options (``aupro``, ``sigma``, ``cls``) never loads the model: metrics are computed from
the stored rows (:mod:`.row_metrics`, which also applies the ROI). With ``shots`` (the few-shot
protocol) or ``profiles``, classes are scored against references (:mod:`.few_shot`), their rows
stored apart. Under ``torchrun`` the processes share out the computing
(:meth:`Evaluator.compute_shard`) and rank 0 evaluates from the stores.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from .. import __version__
from ..data.meta import DatasetMeta, Sample, read_meta
from ..data.roi import RoiLookup
from ..method.config import AUTO, default_pixel_prompts
from ..method.detector import Detector
from ..report.results import DatasetResult
from ..tips.runtime import resolve_device
from . import distributed
from .config import EvalConfig, EvalSettings
from .distributed import DistInfo
from .few_shot import (
    ClassSetup,
    DrawnReferences,
    FewShotError,
    GivenProfiles,
    ShotDraw,
    Skip,
    draw_shots,
)
from .fill import ClassRows, StoreFiller, log_todo
from .lock import OutputLock
from .row_metrics import evaluate_class
from .store import PredictionStore, store_key

logger = logging.getLogger(__name__)

__all__ = [
    "EvalConfig",
    "EvalResult",
    "EvalSettings",
    "Evaluator",
    "FewShotError",
    "ShotDraw",
    "draw_shots",
    "environment",
    "evaluate_datasets",
    "protocol_pixel_prompts",
]


@dataclasses.dataclass
class EvalResult(DatasetResult):
    """A :class:`DatasetResult` plus what its classes were scored against besides prompts.

    ``few_shot`` (with ``shots``): ``{"shots", "shot_seed", "mode", "classes": {class:
    {"references": [paths relative to the root, in draw order], "bank": digest}}, "skipped":
    {class: reason}}``; ``profiles`` (with ``profiles``): ``{"mode", "classes": {class:
    {"profile": folder, "bank": digest}}, "zero_shot": [classes without a profile]}``; None
    otherwise. ``plots``: per class, what the eval report draws
    (:class:`~tipsomaly.report.eval_page.ClassPlots`), when asked for.
    """

    few_shot: dict | None = None
    profiles: dict | None = None
    plots: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class _ShardPlan:
    """One class's work for the ranks: its store folder, the positions of the samples to
    compute, their ``(key, pred_key)``, and the fitted profile with ``shots`` (on the CPU)."""

    store: str
    todo: list[int]
    keys: list[tuple[str, str]]
    profile: Any = None


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
        plots: bool = False,
    ) -> None:
        self.plots = plots  # also each class's curves and worst images, for the report
        self.requested = settings  # pixel_prompts "auto" is resolved per dataset
        self.settings = settings.for_dataset()
        self.out_dir = Path(out_dir)
        self.progress = progress
        self._factory = detector_factory or self._build_detector
        self._detector: Detector | None = None
        self.shared_models = shared_models  # model spec → loaded TipsModel, across evaluators
        self.locked = locked
        self.network_images = 0  # images that went through the network in this object

    def _build_detector(self) -> Detector:
        s = self.settings
        if s.engine != "torch":  # one exported engine per class, on first use
            from .engines import ClassEngines

            return ClassEngines(s)  # type: ignore[return-value]
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
        return PredictionStore(
            self.out_dir / dataset_name / "predictions" / store_key(self.settings)
        )

    def evaluate(self, root: str | os.PathLike, name: str | None = None) -> EvalResult:
        """Predict what is missing, then compute every class's metrics, one class at a time.

        With ``shots`` or ``profiles``, classes are scored against their references
        (:mod:`.few_shot`); :attr:`EvalResult.few_shot` / :attr:`EvalResult.profiles` record
        them (and, with ``shots``, the classes skipped).

        Raises:
            FewShotError: with ``shots``, no class of the dataset has enough train normal
                images.
            ProfileError: with ``profiles``, a profile cannot be read or used.
            OutputLockedError: another run writes into the output folder.
            OutputError: the prediction store cannot be written.
        """
        with contextlib.nullcontext() if self.locked else OutputLock(self.out_dir):
            return self._evaluate(root, name)

    def _open(
        self, root: str | os.PathLike, name: str | None
    ) -> tuple[Path, str, DatasetMeta, StoreFiller]:
        """A dataset's root, name, test split and store filler, this evaluator set up for it."""
        root = Path(root)
        name = name or root.resolve().name
        own = self.requested.for_dataset(name)
        if own != self.settings:  # "auto" picks other prompts for this dataset
            self.settings, self._detector = own, None
        s = self.settings
        meta = read_meta(root, "test", s.classes, allow_outside_root=s.allow_outside_root)
        rois = RoiLookup(s.roi, s.roi_dir, root)
        filler = StoreFiller(s, lambda: self.detector, rois, progress=self.progress)
        return root, name, meta, filler

    def draw(
        self, root: str | os.PathLike, name: str | None = None, meta: DatasetMeta | None = None
    ) -> ShotDraw:
        """The few-shot draw of a dataset (:func:`draw_shots`; ``meta``: its test split, read
        if not given), computing nothing.

        Raises:
            FewShotError: no class of the dataset has enough train normal images.
        """
        if meta is None:
            root, name, meta, _ = self._open(root, name)
        s = self.settings
        return draw_shots(root, meta.classes, s.shots, s.shot_seed, name=name,
                          allow_outside_root=s.allow_outside_root)  # fmt: skip

    def _references(
        self, root: Path, name: str, meta: DatasetMeta
    ) -> DrawnReferences | GivenProfiles | None:
        """What the dataset's classes are scored against besides prompts (None: nothing)."""
        s = self.settings
        if s.shots:
            return DrawnReferences(s, self.draw(root, name, meta), meta.root, lambda: self.detector)
        if s.profiles:
            return GivenProfiles(s)
        return None

    def _evaluate(self, root: str | os.PathLike, name: str | None) -> EvalResult:
        root, name, meta, filler = self._open(root, name)
        s = self.settings
        references = self._references(root, name, meta)
        store = self.store_for(name)
        result = EvalResult(name=name, root=str(root), classes={}, counts={}, aupro=s.aupro)
        if references is not None:
            setattr(result, references.field, references.record)
        try:
            for class_name, samples in meta.samples.items():
                try:
                    setup = references.setup(store, class_name) if references else ClassSetup(store)
                    predictions = filler.predictions(
                        setup.store, class_name, samples, setup.before_compute
                    )
                except Skip as skip:
                    logger.warning("%s: class %s skipped: %s", name, class_name, skip)
                    assert isinstance(references, DrawnReferences)
                    references.record["classes"].pop(class_name, None)
                    references.record["skipped"][class_name] = str(skip)
                    continue
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
                metrics, plots = evaluate_class(
                    class_name, predictions, s, filler.rois, plots=self.plots
                )
                result.classes[class_name] = metrics
                if plots is not None:
                    result.plots[class_name] = plots
        finally:
            self.network_images += filler.network_images
        result.device = self.device
        return result

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
        root, name, meta, filler = self._open(root, name)
        info.check_same(
            [(c, [str(x.image_path) for x in xs]) for c, xs in meta.samples.items()],
            f"the test images of {name}",
        )
        references = self._references(root, name, meta) if info.is_main else None
        store = self.store_for(name)
        try:
            for class_name, samples in meta.samples.items():
                plan = None
                if info.is_main:
                    plan = self._plan_shard(filler, store, class_name, samples, references)
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
                if plan.profile is not None:
                    self.detector.set_profiles([plan.profile], self.settings.scoring_mode)
                class_store = PredictionStore(plan.store)
                stored = class_store.open_class(class_name, clean=False)  # others write it too
                filler.compute(ClassRows(class_store, class_name, samples, keys, stored), mine)
        finally:
            self.network_images += filler.network_images
        return offset

    def _plan_shard(
        self,
        filler: StoreFiller,
        store: PredictionStore,
        class_name: str,
        samples: Sequence[Sample],
        references: DrawnReferences | GivenProfiles | None,
    ) -> _ShardPlan | None:
        """Rank 0's plan of one class for :meth:`compute_shard`; None: nothing to share out
        (a class the few-shot protocol skips: rank 0's evaluation says why)."""
        try:
            setup = references.setup(store, class_name) if references else ClassSetup(store)
            c, todo = filler.open(setup.store, class_name, samples, setup.before_compute)
        except Skip:
            return None
        todo = [i for i in todo if c.keys[i] is not None]  # unreadable: rank 0 reports them
        profile = None
        if todo and setup.share:  # fitted by before_compute: share it, not refit it
            profile = self.detector.profiles[class_name]
            if next(profile.bank.buffers()).device.type != "cpu":
                profile = copy.deepcopy(profile)
                profile.bank.to("cpu")
        if todo:
            log_todo(class_name, len(todo), len(samples), ", shared out")
        return _ShardPlan(str(setup.store.root), todo, [c.keys[i] for i in todo], profile)


#: the paper's cross-dataset choice of learned prompts, kept under its former name
protocol_pixel_prompts = default_pixel_prompts


def evaluate_datasets(
    roots: Sequence[str | os.PathLike],
    settings: EvalConfig,
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
    lock: bool = True,
    plots: bool = False,
) -> list[EvalResult]:
    """Evaluate several datasets with one model (loaded at most once).

    ``plots``: also each class's curves and worst images (:attr:`EvalResult.plots`, for
    :func:`~tipsomaly.report.eval_page.write_eval_report`).

    ``settings.pixel_prompts == "auto"`` applies :func:`default_pixel_prompts` per dataset.
    ``lock``: hold ``out_dir``'s :class:`~tipsomaly.runners.lock.OutputLock` meanwhile (False
    when the caller holds it, e.g. to write the result files under the same lock).

    With ``settings.shots``, every dataset's reference images are drawn first, so that one
    without a train split stops the run before any model is loaded.

    Under ``torchrun`` every rank computes its share of the missing predictions
    (:meth:`Evaluator.compute_shard`), then rank 0 alone evaluates from the stores, as one
    process does, and the other ranks return ``[]``; rank 0 holds the lock for the job.

    Raises:
        OutputLockedError: another run writes into ``out_dir``.
        FewShotError: with ``shots``, a dataset none of whose classes has enough train normal
            images (raised before anything is computed).
        DistributedError: under torchrun, the processes lost each other (one died or hangs).
    """
    info = distributed.current()
    if lock:
        with distributed.output_lock(out_dir, info):
            return evaluate_datasets(
                roots, settings, out_dir, progress=progress, lock=False, plots=plots
            )
    models: dict = {}

    def evaluator(name: str) -> Evaluator:
        own = settings.for_dataset(name)
        shown = progress and info.is_main
        return Evaluator(
            own, out_dir, progress=shown, shared_models=models, locked=True, plots=plots
        )

    if settings.shots:  # every draw first: a dataset without train images stops the run
        for root in roots:
            evaluator(Path(root).resolve().name).draw(root)
    if info.active:
        try:
            offset = 0
            for root in roots:
                name = Path(root).resolve().name
                offset = evaluator(name).compute_shard(root, name, info, offset)
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
        one = evaluator(name)
        if settings.pixel_prompts == AUTO:
            chosen = one.settings.pixel_prompts
            logger.info("%s: pixel prompts %s", name, chosen or "none (fixed prompts for patches)")
        results.append(one.evaluate(root, name))
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
