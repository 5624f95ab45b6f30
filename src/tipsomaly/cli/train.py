"""``tipsomaly train --data DIR --out DIR``: learn the pixel prompts, one call into the runner."""

from __future__ import annotations

import argparse
import logging

from .exit_codes import ExitCode
from .options import (
    HelpFormatter,
    add_config_option,
    add_input_options,
    add_model_options,
    apply_input_options,
    check_model_options,
    dtype_name,
    ensure_out_dir,
)

logger = logging.getLogger(__name__)

_EPILOG = """\
outputs (in --out):
  prompts_epochN.safetensors      the learned prompts after epoch N, with the run's metadata;
                                  use them with --pixel-prompts (predict, eval)
  train_state_epochN.safetensors  Adam's state and the shuffle generator's (for --resume)
  train_config.json               the settings a resumed run must keep
  train_log.csv                   losses per step and per epoch (+ pixel AUROC / AUPRO of the
                                  --eval-data set after each epoch)
the defaults are the paper's: 518 px, batch 8, 2 epochs, Adam lr 1e-3 betas (0.5, 0.999),
8 learnable vectors per state, seed 111, industrial prompts, trained on the test split of
--data (the paper trains on MVTec AD's test set and evaluates on the other datasets)."""


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..runners.config import TrainConfig

    p = sub.add_parser(
        "train",
        parents=[common],
        help="learn the pixel prompts on an auxiliary dataset (meta.json)",
        description="Train TipsOmaly's learnable pixel prompts with the backbone frozen: each "
        "image's patch features are computed once, then only the text tower runs per step.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    add_config_option(p, TrainConfig, "data")
    add_config_option(p, TrainConfig, "out")
    add_model_options(
        p,
        TrainConfig,
        skip=("pixel_prompts", "cls"),
        batch_size={"help": "images per step"},
        sigma={"help": "map smoothing for --eval-data, in model-input pixels"},
    )
    add_input_options(p)
    add_config_option(p, TrainConfig, "allow_outside_root")
    for name in ("epochs", "lr"):
        add_config_option(p, TrainConfig, name)
    add_config_option(p, TrainConfig, "betas", nargs=2)
    for name in ("n_prompt", "seed"):
        add_config_option(p, TrainConfig, name)
    add_config_option(p, TrainConfig, "classes", nargs="+")
    for name in ("feature_cache", "cache_dtype", "resume", "eval_data", "aupro"):
        add_config_option(p, TrainConfig, name)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``train``: check options, train, print the last checkpoint's path."""
    from ..runners.train import TrainConfig, train

    device, dtype = check_model_options(args)  # before any model loads
    ensure_out_dir(args.out)
    apply_input_options(args)

    config = TrainConfig(
        data=args.data,
        out=args.out,
        model=args.model,
        image_size=args.image_size,
        batch_size=args.batch_size,
        epochs=args.epochs,
        lr=args.lr,
        betas=tuple(args.betas),
        n_prompt=args.n_prompt,
        seed=args.seed,
        prompt_type=args.prompt_type,
        prompt_file=args.prompt_file,
        classes=args.classes,
        device=str(device),
        dtype=dtype_name(dtype),
        feature_cache=args.feature_cache,
        cache_dtype=args.cache_dtype,
        resume=args.resume,
        eval_data=args.eval_data,
        sigma=args.sigma,
        aupro=args.aupro,
        offline=args.offline or None,
        progress=not args.quiet,
        allow_outside_root=args.allow_outside_root,
    )
    # settings, meta.json, prompt, resume and non-finite-loss problems are TipsomalyErrors:
    # main() prints them as one line; anything else is a bug and keeps its traceback
    result = train(config)
    if result.last_checkpoint is not None:
        print(result.last_checkpoint)  # the prompts to pass to --pixel-prompts
    return ExitCode.OK
