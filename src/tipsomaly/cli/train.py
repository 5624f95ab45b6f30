"""``tipsomaly train --data DIR --out DIR``: learn the pixel prompts, one call into the runner."""

from __future__ import annotations

import argparse
import logging

from .options import (
    HelpFormatter,
    add_input_options,
    add_model_options,
    apply_input_options,
    check_model_options,
    dtype_name,
    ensure_out_dir,
    non_negative_float,
    positive_float,
    positive_int,
    seed_int,
    unit_interval_open,
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
    p = sub.add_parser(
        "train",
        parents=[common],
        help="learn the pixel prompts on an auxiliary dataset (meta.json)",
        description="Train TipsOmaly's learnable pixel prompts with the backbone frozen: each "
        "image's patch features are computed once, then only the text tower runs per step.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data", required=True, metavar="DIR", help="dataset root with meta.json")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    add_model_options(p)
    add_input_options(p)
    p.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="let meta.json paths leave the dataset root (../, absolute paths, symlinks out)",
    )
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per step")
    p.add_argument("--epochs", type=positive_int, default=2, help="passes over the data")
    p.add_argument("--lr", type=positive_float, default=1e-3, help="Adam learning rate (> 0)")
    p.add_argument(
        "--betas",
        type=unit_interval_open,
        nargs=2,
        default=(0.5, 0.999),
        metavar=("B1", "B2"),
        help="Adam's betas, each in [0, 1)",
    )
    p.add_argument("--n-prompt", type=positive_int, default=8, help="learned vectors per state")
    p.add_argument("--seed", type=seed_int, default=111, help="initialisation and shuffling")
    p.add_argument("--classes", nargs="+", help="train on these classes only (default: all)")
    p.add_argument(
        "--feature-cache",
        default="memory",
        metavar="DIR|memory|none",
        help="where the frozen patch features live: in memory (default), in a directory "
        "(reused by later runs on the same images and model), or none (backbone every step)",
    )
    p.add_argument(
        "--cache-dtype",
        default="fp32",
        choices=["fp32", "fp16"],
        help="precision of the cached features (fp16: half the memory; default: fp32)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue after the last complete epoch in --out (same settings; --epochs may grow)",
    )
    p.add_argument(
        "--eval-data", metavar="DIR", help="dataset root evaluated after each epoch (pixel metrics)"
    )
    p.add_argument(
        "--aupro", choices=["zsad", "mvtec"], default="zsad", help="AUPRO definition of --eval-data"
    )
    p.add_argument(
        "--sigma", type=non_negative_float, default=4.0, help="map smoothing for --eval-data (px)"
    )
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
        eval_sigma=args.sigma,
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
    return 0
