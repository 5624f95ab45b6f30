"""``tipsomaly train --data DIR --out DIR``: learn the pixel prompts, one call into the runner."""

from __future__ import annotations

import argparse
import logging

from .exit_codes import ExitCode
from .options import (
    DECISION_SETTINGS,
    ENGINE_SETTINGS,
    PROFILE_SETTINGS,
    HelpFormatter,
    add_settings,
    config_from_args,
    ensure_out_dir,
    resolved,
)

logger = logging.getLogger(__name__)

#: what a training run does not use: it learns the pixel prompts, on whole images
NOT_TRAINED = ("pixel_prompts", "cls", "tile", "tile_overlap", "roi")
NOT_TRAINED += PROFILE_SETTINGS + DECISION_SETTINGS + ENGINE_SETTINGS

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
    add_settings(
        p,
        TrainConfig,
        skip=NOT_TRAINED,
        batch_size={"help": "images per step"},
        sigma={"help": "map smoothing for --eval-data, in model-input pixels"},
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``train``: check options, train, print the last checkpoint's path."""
    from ..runners.train import TrainConfig, train

    config = resolved(config_from_args(args, TrainConfig, progress=not args.quiet))
    ensure_out_dir(args.out)
    # settings, meta.json, prompt, resume and non-finite-loss problems are TipsomalyErrors:
    # main() prints them as one line; anything else is a bug and keeps its traceback
    result = train(config)
    if result.last_checkpoint is not None:
        print(result.last_checkpoint)  # the prompts to pass to --pixel-prompts
    return ExitCode.OK
