"""Learn the pixel prompts on an auxiliary dataset: cached features, Adam, checkpoints, resume.

The paper's recipe (METHOD.md §2): the backbone stays frozen; only the (2, n_prompt, D) preambles
of the learned prompts are optimised, with Adam (lr 1e-3, betas 0.5/0.999), batch 8, 2 epochs,
seed 111, at 518 px, on the loss of :func:`tipsomaly.method.losses.segmentation_loss` applied to
the patch probabilities upsampled to the image size. Each image's patch features are computed
once (:mod:`.features`); a step runs only the text tower.

Files written under ``out``:

* ``prompts_epoch{N}.safetensors`` — the prompts after epoch N (:class:`PixelPrompts`, with the
  run's metadata), usable as ``Detector(pixel_prompts=...)`` / ``--pixel-prompts``;
* ``train_state_epoch{N}.safetensors`` — Adam's moments and step count and the shuffle
  generator's state after epoch N (what ``resume`` needs to continue bit for bit);
* ``train_config.json`` — the settings that must not change on resume;
* ``train_log.csv`` — one row per step and one per epoch (means, and evaluation metrics).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from ..data.meta import read_meta
from ..errors import one_line
from ..files import atomic_path
from ..method.losses import LossTerms, segmentation_loss
from ..method.maps import anomaly_maps, upsample
from ..method.pixel_prompts import PixelPromptError, PixelPrompts
from ..method.prompts import PromptSet, learned_embeddings, load_prompts
from ..method.scoring import state_probabilities
from ..metrics import pixel_metrics
from ..tips.model import TipsModel, load_model
from ..tips.runtime import resolve_device, resolve_dtype
from ..validation import multiple_of
from .config import TrainConfig, TrainError
from .features import FeatureStore, build_features, model_fingerprint
from .lock import OutputLock

logger = logging.getLogger(__name__)

PROMPTS_FILE = "prompts_epoch{epoch}.safetensors"
STATE_FILE = "train_state_epoch{epoch}.safetensors"
CONFIG_FILE = "train_config.json"
LOG_FILE = "train_log.csv"
LOSS_NAMES = ("focal", "dice_abnormal", "dice_normal", "total")
EVAL_NAMES = ("pixel_auroc", "pixel_aupro")
LOG_COLUMNS = ("kind", "epoch", "step", "images", *LOSS_NAMES, *EVAL_NAMES)
CLASS_WORD = "object"


class NonFiniteLossError(TrainError):
    """A step's loss (or the prompts after it) is NaN or infinite: training stopped there.

    ``epoch``, ``step`` (1-based, counted over the run) and ``values`` (the step's loss terms)
    say where; the message is completed by :func:`train` with the checkpoint that is kept.
    """

    def __init__(
        self, epoch: int, step: int, values: dict[str, float], what: str = "the loss is not finite"
    ) -> None:
        self.epoch, self.step, self.values, self.what = epoch, step, values, what
        terms = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
        super().__init__(f"training stopped at epoch {epoch}, step {step}: {what} ({terms})")


@dataclass
class TrainResult:
    """What a run produced.

    ``checkpoints``: the prompt files of every finished epoch in ``out`` (also those of the run
    resumed); ``epoch_losses`` / ``eval_metrics`` / ``epoch_seconds`` (wall time of the training
    steps, evaluation excluded): the epochs run by this call; ``feature_seconds``: wall time to
    fill the feature stores.
    """

    out: Path
    prompts: PixelPrompts
    checkpoints: list[Path] = field(default_factory=list)
    epoch_losses: list[dict[str, float]] = field(default_factory=list)
    eval_metrics: list[dict[str, float]] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)
    feature_seconds: float = 0.0

    @property
    def last_checkpoint(self) -> Path | None:
        return self.checkpoints[-1] if self.checkpoints else None


# -- one step ---------------------------------------------------------------------------------
def pixel_prompt_losses(
    model: TipsModel,
    prompts: PromptSet,
    preambles: torch.Tensor,
    patches: torch.Tensor,
    masks: torch.Tensor,
    image_size: int,
    class_word: str = CLASS_WORD,
) -> LossTerms:
    """The training loss of one batch, differentiable in ``preambles``.

    Args:
        preambles: (2, n_prompt, D) learned vectors [normal, abnormal].
        patches: (B, N, D) final-norm patch tokens (N = (S/14)², any float dtype).
        masks: (B, S, S) ground truth ({0, 1} or bool).
        image_size: S, the side of the model input in pixels.

    The learned text embeddings (the prompt ensemble with ``class_word``, preamble prepended)
    give per-patch softmax(cos/temperature) [normal, abnormal] probabilities; these are
    upsampled bilinearly (align_corners=False) to S×S, without smoothing, and scored by
    :func:`~tipsomaly.method.losses.segmentation_loss`.
    """
    grid = image_size // model.patch_size
    if patches.shape[1] != grid * grid:
        raise ValueError(f"{patches.shape[1]} patches do not fill a {grid}×{grid} grid")
    text = learned_embeddings(model, prompts, preambles, class_word)
    probs = state_probabilities(patches.to(text.device), text, model.temperature)
    maps = upsample(probs.transpose(1, 2), (grid, grid), (image_size, image_size))
    return segmentation_loss(maps, masks.to(maps.device))


def make_optimizer(
    param: torch.Tensor, lr: float = 1e-3, betas: tuple[float, float] = (0.5, 0.999)
) -> torch.optim.Adam:
    """Adam over the preambles, as the reference trains them."""
    return torch.optim.Adam([param], lr=lr, betas=betas)


# -- checkpoints ------------------------------------------------------------------------------
def save_train_state(
    path: Path, optimizer: torch.optim.Adam, generator: torch.Generator, epoch: int
) -> Path:
    """Write Adam's state (moments, step) and the generator state as safetensors (no pickle)."""
    from safetensors.torch import save_file

    (state,) = optimizer.state_dict()["state"].values()
    tensors = {
        "adam.exp_avg": state["exp_avg"].detach().cpu().contiguous(),
        "adam.exp_avg_sq": state["exp_avg_sq"].detach().cpu().contiguous(),
        "adam.step": torch.as_tensor(state["step"], dtype=torch.float32).reshape(1).cpu(),
        "generator": generator.get_state(),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), {"epoch": str(epoch), "format": "tipsomaly-train-state-1"})
    return path


def load_train_state(path: Path, optimizer: torch.optim.Adam, generator: torch.Generator) -> None:
    """Restore what :func:`save_train_state` wrote into a fresh optimizer and generator.

    Raises :class:`TrainError` naming ``path`` when the file is unreadable (truncated, not
    safetensors) or its tensors do not fit: moments of another shape than the prompts, not
    fp32 or not finite; a step that is not a whole number >= 0; a generator state of another
    size or dtype.
    """
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...: any broken file
        raise TrainError(
            f"cannot resume: {path} is unreadable ({one_line(exc)}); delete it and the "
            "prompts of the same epoch to resume from the epoch before"
        ) from None
    (param,) = optimizer.param_groups[0]["params"]
    generator_state = generator.get_state()
    expected = {
        "adam.exp_avg": (tuple(param.shape), torch.float32),
        "adam.exp_avg_sq": (tuple(param.shape), torch.float32),
        "adam.step": ((1,), torch.float32),
        "generator": (tuple(generator_state.shape), generator_state.dtype),
    }
    problems = [f"missing {k}" for k in expected if k not in tensors]
    for key, (shape, dtype) in expected.items():
        t = tensors.get(key)
        if t is None:
            continue
        if tuple(t.shape) != shape or t.dtype != dtype:
            problems.append(f"{key} is {t.dtype} {tuple(t.shape)}, expected {dtype} {shape}")
        elif t.is_floating_point() and not bool(torch.isfinite(t).all()):
            problems.append(f"{key} holds NaN or infinite values")
    if not problems:
        step = float(tensors["adam.step"][0])
        if step < 0 or step != int(step):
            problems.append(f"adam.step is {step!r}, expected a whole number >= 0")
        if tensors["adam.exp_avg_sq"].min() < 0:
            problems.append("adam.exp_avg_sq has negative values")
    if problems:
        raise TrainError(f"cannot resume: {path} does not fit this run: " + "; ".join(problems))
    state = optimizer.state_dict()
    state["state"] = {
        0: {
            "step": tensors["adam.step"].reshape(()),
            "exp_avg": tensors["adam.exp_avg"],
            "exp_avg_sq": tensors["adam.exp_avg_sq"],
        }
    }
    optimizer.load_state_dict(state)
    try:
        generator.set_state(tensors["generator"])
    except (RuntimeError, ValueError) as exc:
        raise TrainError(
            f"cannot resume: {path} holds an invalid generator state ({one_line(exc)})"
        ) from None


def completed_epochs(out: Path) -> int:
    """The last epoch N with both ``prompts_epochN`` and ``train_state_epochN`` in ``out``."""
    done = [
        int(m.group(1))
        for p in out.glob("prompts_epoch*.safetensors")
        if (m := re.fullmatch(r"prompts_epoch(\d+)\.safetensors", p.name))
        and (out / STATE_FILE.format(epoch=int(m.group(1)))).is_file()
    ]
    return max(done, default=0)


# -- evaluation -------------------------------------------------------------------------------
def evaluate_prompts(
    model: TipsModel,
    prompts: PromptSet,
    preambles: torch.Tensor,
    store: FeatureStore,
    *,
    sigma: float = 4.0,
    aupro: str = "zsad",
    batch_size: int = 8,
    class_word: str = CLASS_WORD,
) -> dict[str, float]:
    """Pixel AUROC and AUPRO of the learned prompts, per class and their mean over classes.

    Maps follow the paper's recipe (:func:`~tipsomaly.method.maps.anomaly_maps`, ``sigma`` px)
    at model resolution S; metrics come from :func:`tipsomaly.metrics.pixel_metrics`. Returns
    ``{"pixel_auroc", "pixel_aupro"}`` (NaN-skipping means) plus ``"<class>/pixel_auroc"``, ...
    """
    size = store.image_size
    grid = (size // model.patch_size,) * 2
    with torch.no_grad():
        text = learned_embeddings(model, prompts, preambles.detach(), class_word)
    by_class: dict[str, list[int]] = {}
    for i, name in enumerate(store.class_names):
        by_class.setdefault(name, []).append(i)
    out: dict[str, float] = {}
    for name, rows in by_class.items():
        maps, masks = [], []
        for start in range(0, len(rows), batch_size):
            patches, m = store.get(rows[start : start + batch_size])
            probs = state_probabilities(patches.to(text.device), text, model.temperature)
            maps.append(anomaly_maps(probs, grid, (size, size), sigma).cpu())
            masks.append(m)
        values = pixel_metrics(torch.cat(maps), torch.cat(masks), aupro=aupro)
        for key in EVAL_NAMES:
            out[f"{name}/{key}"] = float(values[key])
    for key in EVAL_NAMES:
        per_class = [out[f"{c}/{key}"] for c in by_class]
        finite = [v for v in per_class if not math.isnan(v)]
        out[key] = float(np.mean(finite)) if finite else float("nan")
    return out


# -- the run ----------------------------------------------------------------------------------
class _Log:
    """``train_log.csv``: rows appended and flushed as they come; on resume, cut to an epoch."""

    def __init__(self, path: Path, keep_epochs: int) -> None:
        rows: list[dict[str, str]] = []
        if keep_epochs and path.is_file():
            try:
                with path.open(newline="", errors="replace") as f:
                    rows = [r for r in csv.DictReader(f) if _epoch_of(r) <= keep_epochs]
            except (OSError, csv.Error) as exc:
                logger.warning("%s is unreadable (%s): starting a new log", path, exc)
                rows = []
            rows = [{k: r.get(k, "") for k in LOG_COLUMNS} for r in rows]
        self._file = path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=LOG_COLUMNS)
        self._writer.writeheader()
        self._writer.writerows(rows)
        self._file.flush()

    def write(self, **row: object) -> None:
        self._writer.writerow({k: _cell(v) for k, v in row.items()})
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _epoch_of(row: dict) -> float:
    """A log row's epoch; rows with none (a torn last line) sort after every epoch."""
    try:
        return int(row.get("epoch") or "")
    except (TypeError, ValueError):
        return math.inf


def _cell(value: object) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _identity(config: TrainConfig, model: TipsModel, root: Path, classes: list[str]) -> dict:
    """The settings a resumed run must share with the run it continues."""
    return {
        "backbone": model.name,
        "backbone_fingerprint": model_fingerprint(model),
        "width": model.embed_dim,
        "train_data": str(root),
        "train_classes": classes,
        "image_size": config.image_size,
        "batch_size": config.batch_size,
        "lr": config.lr,
        "betas": list(config.betas),
        "n_prompt": config.n_prompt,
        "init_std": config.init_std,
        "seed": config.seed,
        "prompt_type": config.prompt_type,
        "prompt_file": str(config.prompt_file) if config.prompt_file else None,
        "dtype": str(model.compute_dtype).replace("torch.", ""),
        "cache_dtype": config.cache_dtype,
    }


def _check_resume(out: Path, identity: dict) -> int:
    """The epoch to continue after (0: nothing saved, start afresh); refuses changed settings."""
    done = completed_epochs(out)
    if not done:
        logger.info("nothing to resume in %s: starting from scratch", out)
        return 0
    path = out / CONFIG_FILE
    if not path.is_file():
        raise TrainError(f"cannot resume: {path} is missing")
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise TrainError(f"cannot resume: {path} is unreadable ({one_line(exc)})") from None
    if not isinstance(saved, dict):
        raise TrainError(f"cannot resume: {path} does not hold the settings of a run")
    changed = [f"{k}: {saved.get(k)!r} → {v!r}" for k, v in identity.items() if saved.get(k) != v]
    if changed:
        raise TrainError(
            "cannot resume with different settings (start a new output directory instead):\n  "
            + "\n  ".join(changed)
        )
    return done


def _load(config: TrainConfig) -> TipsModel:
    device = resolve_device(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if isinstance(config.model, TipsModel):
        model = config.model.to(device=device).set_compute_dtype(dtype)
    else:
        model = load_model(config.model, device=device, dtype=dtype, offline=config.offline)
    model.eval().requires_grad_(False)
    multiple_of(config.image_size, "image_size", model.patch_size, what="the patch size")
    return model


def _stores(
    model: TipsModel, config: TrainConfig, samples: list
) -> tuple[FeatureStore, FeatureStore | None]:
    """The training set's feature store, and the evaluation set's (or None)."""

    def build(items: list, desc: str) -> FeatureStore:
        return build_features(
            model,
            items,
            config.image_size,
            cache=config.feature_cache,
            cache_dtype=config.cache_dtype,
            batch_size=config.batch_size,
            progress=config.progress,
            desc=desc,
            max_pixels=config.max_pixels,
        )

    eval_store = None
    if config.eval_data is not None:
        eval_meta = read_meta(
            config.eval_data, "test", allow_outside_root=config.allow_outside_root
        )
        eval_store = build(eval_meta.all_samples(), "eval features")
    return build(samples, "train features"), eval_store


def _start_epoch(config: TrainConfig, out: Path, identity: dict) -> int:
    """0 for a fresh run, else the last complete epoch of the run being resumed."""
    if config.resume:
        return _check_resume(out, identity)
    done = completed_epochs(out)
    if done:
        raise TrainError(
            f"{out} already holds the checkpoints of a run (epoch {done}): resume it (--resume) "
            "or choose another output directory"
        )
    return 0


def _run_epoch(
    epoch: int,
    config: TrainConfig,
    model: TipsModel,
    prompts: PromptSet,
    param: torch.Tensor,
    optimizer: torch.optim.Adam,
    generator: torch.Generator,
    store: FeatureStore,
    train_log: _Log,
) -> dict[str, float]:
    """One pass over ``store`` in a fresh random order; returns the mean of each loss term."""
    steps_per_epoch = math.ceil(len(store) / config.batch_size)
    sums = dict.fromkeys(LOSS_NAMES, 0.0)
    steps = 0
    order = torch.randperm(len(store), generator=generator).tolist()
    desc = f"epoch {epoch}/{config.epochs}"
    with tqdm(total=steps_per_epoch, desc=desc, unit="step", disable=not config.progress) as bar:
        for b in range(0, len(order), config.batch_size):
            patches, masks = store.get(order[b : b + config.batch_size])
            if patches.shape[0] == 0:
                continue
            terms = pixel_prompt_losses(model, prompts, param, patches, masks, config.image_size)
            values = terms.values()
            step = (epoch - 1) * steps_per_epoch + steps + 1
            if not all(math.isfinite(v) for v in values.values()):
                train_log.write(kind="step", epoch=epoch, step=step, images=len(patches), **values)
                raise NonFiniteLossError(epoch, step, values)
            optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            optimizer.step()
            if not bool(torch.isfinite(param).all()):
                raise NonFiniteLossError(epoch, step, values, "the prompts became NaN or infinite")
            steps += 1
            for k in LOSS_NAMES:
                sums[k] += values[k]
            train_log.write(kind="step", epoch=epoch, step=step, images=len(patches), **values)
            bar.update(1)
            bar.set_postfix(loss=f"{sums['total'] / steps:.4f}")
    return {k: v / max(steps, 1) for k, v in sums.items()}


def train(config: TrainConfig) -> TrainResult:
    """Train the pixel prompts; see the module docstring for what is written under ``out``.

    With ``config.resume``, continue from the last complete epoch in ``out`` (same settings
    required; ``epochs`` may grow): the result is bitwise that of an uninterrupted run on the
    CPU. Nothing to resume starts afresh. One run at a time writes into ``out`` (its
    :class:`~tipsomaly.runners.lock.OutputLock`; a second run gets ``OutputLockedError``).
    """
    with OutputLock(config.out):
        return _train(config)


def _train(config: TrainConfig) -> TrainResult:
    model = _load(config)
    meta = read_meta(
        config.data,
        "test",
        list(config.classes) if config.classes else None,
        allow_outside_root=config.allow_outside_root,
    )
    out = Path(config.out)
    identity = _identity(config, model, meta.root.resolve(), meta.classes)
    start = _start_epoch(config, out, identity)
    (out / CONFIG_FILE).write_text(json.dumps(identity, indent=2) + "\n")
    prompts = load_prompts(config.prompt_type, config.prompt_file)

    # one generator: the initial prompts first, then every epoch's shuffle
    generator = torch.Generator().manual_seed(config.seed)
    init = PixelPrompts.init_random(
        config.n_prompt, model.embed_dim, std=config.init_std, generator=generator
    )
    param = init.preambles.to(model.device).requires_grad_(True)
    optimizer = make_optimizer(param, config.lr, tuple(config.betas))
    result = TrainResult(out=out, prompts=init)
    if start:
        prompts_path = out / PROMPTS_FILE.format(epoch=start)
        try:
            result.prompts = PixelPrompts.load(prompts_path)
        except PixelPromptError as exc:
            raise TrainError(f"cannot resume: {exc}") from None
        if result.prompts.preambles.shape != param.shape:
            raise TrainError(
                f"cannot resume: {prompts_path} holds prompts of shape "
                f"{tuple(result.prompts.preambles.shape)}, this run trains {tuple(param.shape)}"
            )
        with torch.no_grad():
            param.copy_(result.prompts.preambles.to(param.device))
        load_train_state(out / STATE_FILE.format(epoch=start), optimizer, generator)
        result.checkpoints = [out / PROMPTS_FILE.format(epoch=e) for e in range(1, start + 1)]
        logger.info("resuming after epoch %d of %d from %s", start, config.epochs, out)
    if start >= config.epochs:
        logger.info("all %d epochs are already done in %s", config.epochs, out)
        return result

    clock = time.perf_counter()
    store, eval_store = _stores(model, config, meta.all_samples())
    result.feature_seconds = time.perf_counter() - clock
    metadata = {
        **{k: v for k, v in identity.items() if v is not None},
        "train_classes": json.dumps(meta.classes),
        "betas": ",".join(repr(b) for b in config.betas),
        "prompt_method": "concat",
        "class_word": CLASS_WORD,
        "train_images": len(store),
        "epochs_total": config.epochs,
        "tipsomaly_version": __version__,
    }
    logger.info(
        "training 2×%d pixel prompts of %s on %d images of %s (%d classes), %d epochs",
        config.n_prompt, model.name, len(store), meta.root, len(meta.classes), config.epochs,
    )  # fmt: skip
    train_log = _Log(out / LOG_FILE, keep_epochs=start)
    try:
        for epoch in range(start + 1, config.epochs + 1):
            clock = time.perf_counter()
            try:
                means = _run_epoch(
                    epoch, config, model, prompts, param, optimizer, generator, store, train_log
                )
            except NonFiniteLossError as exc:
                kept = f"the last good prompts are kept in {result.last_checkpoint}"
                if result.last_checkpoint is None:
                    kept = "no prompts were written"
                advice = "Check the features and the model weights, or lower --lr"
                exc.args = (f"{exc.args[0]}; {kept}. {advice}",)
                raise
            result.epoch_seconds.append(time.perf_counter() - clock)
            result.epoch_losses.append(means)
            scores: dict[str, float] = {}
            if eval_store is not None:
                scores = evaluate_prompts(
                    model, prompts, param, eval_store, sigma=config.sigma,
                    aupro=config.aupro, batch_size=config.batch_size,
                )  # fmt: skip
                result.eval_metrics.append(scores)
            summary = {k: scores[k] for k in EVAL_NAMES if k in scores}
            steps = epoch * math.ceil(len(store) / config.batch_size)
            train_log.write(kind="epoch", epoch=epoch, step=steps, images=len(store),
                            **means, **summary)  # fmt: skip
            result.prompts = PixelPrompts(param.detach().float().cpu().clone())
            path = result.prompts.save(
                out / PROMPTS_FILE.format(epoch=epoch),
                **metadata,
                epochs_done=epoch,
                final_loss=repr(means["total"]),
            )
            save_train_state(out / STATE_FILE.format(epoch=epoch), optimizer, generator, epoch)
            result.checkpoints.append(path)
            logger.info(
                "epoch %d/%d: loss %.4f (focal %.4f, dice abnormal %.4f, dice normal %.4f)%s → %s",
                epoch, config.epochs, means["total"], means["focal"], means["dice_abnormal"],
                means["dice_normal"], "".join(f", {k} {v:.4f}" for k, v in summary.items()), path,
            )  # fmt: skip
    finally:
        train_log.close()
    return result
