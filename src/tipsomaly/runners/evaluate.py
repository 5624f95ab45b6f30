"""``tipsomaly eval``: predictions stored as they are computed, then per-class metrics and tables.

The network runs only for images the prediction store lacks, so an interrupted run resumes
where it stopped and a rerun that changes only metric options (``aupro``, ``sigma``, ``cls``)
never loads the model.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..data.dataset import AnomalyDataset, collate_samples
from ..data.meta import read_meta
from ..method.detector import Detector
from ..method.maps import anomaly_maps
from ..method.pixel_prompts import BUNDLED
from ..metrics import image_metrics, pixel_metrics
from ..tips.presets import get_preset, is_preset
from ..tips.runtime import resolve_device, resolve_dtype
from .store import ClassPredictions, PredictionStore, config_key

log = logging.getLogger(__name__)

INDUSTRIAL = ("mvtec", "visa", "mpdd", "btad", "ksdd", "sdd", "dagm", "dtd")
MEDICAL = ("headct", "brainmri", "br35h", "isic", "colondb", "clinicdb", "tn3k", "kvasir", "endo")
# The six numbers of the paper's Table 1, in its order.
TABLE_METRICS = (
    "image_auroc",
    "image_ap",
    "image_f1-max",
    "pixel_auroc",
    "pixel_aupro",
    "pixel_f1-max",
)


def class_metrics(
    scores_cls1: np.ndarray,
    scores_cls2: np.ndarray,
    labels: np.ndarray,
    maps: np.ndarray | None = None,
    masks: np.ndarray | None = None,
    aupro: str = "zsad",
) -> dict[str, float]:
    """Metrics of one class: image metrics for both CLS tokens, pixel metrics when masks exist.

    scores_cls*: (n,) image scores; labels: (n,) 0/1; maps, masks: (n, S, S) or None.
    Keys as in golden.json: ``image_auroc_cls1`` … ``image_f1-max_cls2``, ``pixel_auroc``,
    ``pixel_ap``, ``pixel_aupro``, ``pixel_f1-max``.
    """
    out: dict[str, float] = {}
    for tag, scores in (("cls1", scores_cls1), ("cls2", scores_cls2)):
        for name, value in image_metrics(scores, labels).items():
            out[f"{name}_{tag}"] = value
    if maps is not None and masks is not None:
        out.update(pixel_metrics(maps, masks, aupro=aupro))
    return out


def domain_of(dataset_name: str) -> str:
    """``industrial``, ``medical`` or ``other``, from a dataset's folder name."""
    key = "".join(c for c in dataset_name.lower() if c.isalnum())
    if any(key.startswith(n) for n in INDUSTRIAL):
        return "industrial"
    if any(key.startswith(n) for n in MEDICAL):
        return "medical"
    return "other"


@dataclass
class DatasetResult:
    """Per-class metrics of one dataset and their mean over classes (NaNs skipped)."""

    name: str
    root: str
    classes: dict[str, dict[str, float]]
    counts: dict[str, dict[str, int]]
    errors: list[dict[str, str]] = field(default_factory=list)

    @property
    def domain(self) -> str:
        return domain_of(self.name)

    @property
    def mean(self) -> dict[str, float]:
        keys = sorted({k for m in self.classes.values() for k in m})
        out = {}
        for k in keys:
            values = [m[k] for m in self.classes.values() if k in m and not math.isnan(m[k])]
            out[k] = float(np.mean(values)) if values else float("nan")
        return out


@dataclass
class EvalSettings:
    """What ``tipsomaly eval`` runs: the detector's construction and the metric options."""

    model: str = "l14h"
    pixel_prompts: str | None = None
    prompt_type: str = "industrial"
    prompt_file: str | None = None
    image_size: int = 518
    sigma: float = 4.0
    cls: str = "cls1"
    device: str = "cpu"
    dtype: str = "fp32"
    batch_size: int = 8
    workers: int = 0
    aupro: str = "zsad"
    classes: Sequence[str] | None = None
    offline: bool | None = None

    def prediction_config(self) -> dict:
        """The settings that change the network's outputs (not sigma, cls or aupro)."""
        return {
            "format": 1,
            "model": _identity(self.model),
            "pixel_prompts": _identity(self.pixel_prompts) if self.pixel_prompts else None,
            "prompt_type": self.prompt_type,
            "prompt_file": _identity(self.prompt_file) if self.prompt_file else None,
            "image_size": self.image_size,
            "dtype": self.dtype,
        }


def _identity(spec: str) -> str:
    """A name stays a name; a file or directory becomes its path plus a content fingerprint."""
    path = Path(spec)
    if path.is_file():
        return f"{path.resolve()}#{hashlib.sha256(path.read_bytes()).hexdigest()[:16]}"
    if path.is_dir():
        parts = sorted(
            f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}"
            for p in path.iterdir()
            if p.is_file()
        )
        return f"{path.resolve()}#{hashlib.sha256('|'.join(parts).encode()).hexdigest()[:16]}"
    return spec


class Evaluator:
    """Evaluates datasets with one configuration, building the detector only when needed."""

    def __init__(
        self,
        settings: EvalSettings,
        out_dir: str | os.PathLike,
        *,
        progress: bool = True,
        detector_factory: Callable[[], Detector] | None = None,
        shared_models: dict | None = None,
    ) -> None:
        self.settings = settings
        self.out_dir = Path(out_dir)
        self.progress = progress
        self._factory = detector_factory or self._build_detector
        self._detector: Detector | None = None
        self.shared_models = shared_models  # model spec → loaded TipsModel, across evaluators

    def _build_detector(self) -> Detector:
        s = self.settings
        device = resolve_device(s.device)
        model = self.shared_models.get(s.model) if self.shared_models is not None else None
        detector = Detector(
            model or s.model,
            prompt_type=s.prompt_type,
            prompt_file=s.prompt_file,
            pixel_prompts=s.pixel_prompts,
            image_size=s.image_size,
            sigma=s.sigma,
            cls=s.cls,
            device=device,
            dtype=resolve_dtype(s.dtype, device),
            batch_size=s.batch_size,
            offline=s.offline,
        )
        if self.shared_models is not None:
            self.shared_models[s.model] = detector.model
        return detector

    @property
    def detector(self) -> Detector:
        if self._detector is None:
            log.info("loading the model (%s)", self.settings.model)
            self._detector = self._factory()
        return self._detector

    def store_for(self, dataset_name: str) -> PredictionStore:
        key = config_key(self.settings.prediction_config())
        return PredictionStore(self.out_dir / dataset_name / "predictions" / key)

    def evaluate(self, root: str | os.PathLike, name: str | None = None) -> DatasetResult:
        """Predict what is missing, then compute every class's metrics, one class at a time."""
        root = Path(root)
        name = name or root.resolve().name
        meta = read_meta(root, "test", self.settings.classes)
        store = self.store_for(name)
        result = DatasetResult(name=name, root=str(root), classes={}, counts={})
        for class_name, samples in meta.samples.items():
            predictions = self._predict_class(store, class_name, samples)
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
        return result

    # -- prediction -----------------------------------------------------------------------
    def _predict_class(self, store: PredictionStore, class_name: str, samples) -> ClassPredictions:
        paths = [str(s.image_path) for s in samples]
        done = store.begin_class(class_name, paths)
        if store.is_complete(class_name):
            return store.load_class(class_name)
        todo = [i for i in range(len(samples)) if i not in done]
        if todo:
            self._run_network(store, class_name, [samples[i] for i in todo], todo, len(samples))
        return store.finish_class(class_name)

    def _run_network(self, store, class_name, samples, indices, total) -> None:
        from torch.utils.data import DataLoader
        from tqdm.auto import tqdm

        detector = self.detector
        size = self.settings.image_size
        dataset = AnomalyDataset(samples, size)
        loader = DataLoader(
            dataset,
            batch_size=self.settings.batch_size,
            num_workers=self.settings.workers,
            collate_fn=collate_samples,
            pin_memory=detector.device.type == "cuda",
        )
        bar = tqdm(
            total=total,
            initial=total - len(indices),
            desc=class_name,
            unit="img",
            disable=not self.progress,
            leave=False,
        )
        with bar:
            for batch in loader:
                positions = batch["index"].tolist()  # positions within `samples`
                errors = {indices[e["index"]]: e["error"] for e in batch["errors"]}
                arrays = self._batch_arrays(detector, batch, class_name, indices, positions)
                store.add(class_name, arrays, errors)
                bar.update(len(positions) + len(errors))

    @staticmethod
    def _batch_arrays(detector, batch, class_name, indices, positions) -> dict[str, np.ndarray]:
        n = len(positions)
        size = detector.image_size
        if n:
            scores = detector.score_batch(batch["image"], [class_name] * n)
            g1, g2 = scores.global_probs_cls1.cpu().numpy(), scores.global_probs_cls2.cpu().numpy()
            patch = scores.patch_probs.cpu().numpy()
        else:
            g1 = g2 = np.zeros((0, 2), np.float32)
            patch = np.zeros((0, math.prod(detector.grid), 2), np.float32)
        masks = batch["mask"].numpy().reshape(n, size * size) > 0.5
        return {
            "index": np.array([indices[p] for p in positions], dtype=np.int64),
            "label": batch["label"].numpy(),
            "has_mask": batch["has_mask"].numpy(),
            "original_hw": batch["original_hw"].numpy().reshape(n, 2),
            "global_probs_cls1": g1,
            "global_probs_cls2": g2,
            "patch_probs": patch,
            "masks_packed": np.packbits(masks, axis=1).reshape(n, -1),
        }

    # -- metrics --------------------------------------------------------------------------
    def _metrics(self, class_name: str, predictions: ClassPredictions) -> dict[str, float]:
        a = predictions.arrays
        if len(predictions) == 0:
            log.warning("class %s: no image could be evaluated", class_name)
            return {}
        from ..method.scoring import image_scores

        patch = torch.from_numpy(a["patch_probs"])
        score1 = image_scores(torch.from_numpy(a["global_probs_cls1"]), patch).numpy()
        score2 = image_scores(torch.from_numpy(a["global_probs_cls2"]), patch).numpy()
        maps = masks = None
        if a["has_mask"].any():
            if not a["has_mask"][a["label"] == 1].all():
                log.warning(
                    "class %s: some anomalous images have no mask; their pixels count as normal",
                    class_name,
                )
            maps = self.class_maps(patch)
            masks = predictions.masks(self.settings.image_size)
        return class_metrics(score1, score2, a["label"], maps, masks, aupro=self.settings.aupro)

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


def protocol_pixel_prompts(model: str, dataset_name: str) -> str | None:
    """The paper's cross-dataset choice of learned prompts for its backbone (``l14h``).

    Prompts trained on VisA for MVTec AD, prompts trained on MVTec AD for everything else;
    ``None`` for other backbones (no released prompts fit them).
    """
    if not (is_preset(model) and get_preset(model).short_name == "l14h"):
        return None
    key = "".join(c for c in dataset_name.lower() if c.isalnum())
    name = "trained-on-visa" if key.startswith("mvtec") else "trained-on-mvtec"
    assert name in BUNDLED
    return name


def evaluate_datasets(
    roots: Sequence[str | os.PathLike],
    settings: EvalSettings,
    out_dir: str | os.PathLike,
    *,
    progress: bool = True,
) -> list[DatasetResult]:
    """Evaluate several datasets with one model (loaded at most once).

    ``settings.pixel_prompts == "auto"`` applies :func:`protocol_pixel_prompts` per dataset.
    """
    from dataclasses import replace

    models: dict = {}
    results = []
    for root in roots:
        name = Path(root).resolve().name
        own = settings
        if settings.pixel_prompts == "auto":
            chosen = protocol_pixel_prompts(settings.model, name)
            log.info("%s: pixel prompts %s", name, chosen or "none (fixed prompts for patches)")
            own = replace(settings, pixel_prompts=chosen)
        evaluator = Evaluator(own, out_dir, progress=progress, shared_models=models)
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
