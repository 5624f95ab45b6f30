"""``tipsomaly eval``: the paper's Table 1 for one or several datasets with a ``meta.json``."""

from __future__ import annotations

import argparse
import os

from ..runners.config import EvalConfig
from .exit_codes import ExitCode
from .options import (
    DECISION_SETTINGS,
    HelpFormatter,
    add_config_option,
    add_settings,
    config_from_args,
    ensure_out_dir,
    resolved,
    writing,
)


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:

    p = sub.add_parser(
        "eval",
        parents=[common],
        help="evaluate on datasets with meta.json: per-class metrics and a Table-1 summary",
        description="Predict every test image of each dataset (resumable: predictions are "
        "stored as they are computed under OUT/<dataset>/predictions), then compute image "
        "metrics for both CLS tokens and pixel metrics per class. Changing only --aupro, "
        "--sigma or --cls reuses the stored predictions without running the network. "
        "--shots K runs the few-shot protocol: K normal images per class from the dataset's "
        "train split as references (results.json lists them).",
        epilog="exit status: 0 done, 3 some images could not be read (listed), 1 an option, "
        "model, dataset or output error. Every option is checked before the model loads.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--data", nargs="+", required=True, metavar="DIR", help="dataset root(s) with meta.json"
    )
    add_settings(p, EvalConfig, skip=(*DECISION_SETTINGS, "roi", "roi_dir"), recorded_note="")
    where = p.add_mutually_exclusive_group()
    add_config_option(where, EvalConfig, "roi")
    add_config_option(where, EvalConfig, "roi_dir")
    p.add_argument("--out", default="tipsomaly-eval", help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``eval``: check options, evaluate every dataset, write and print the results."""
    from ..errors import InvalidOptionError
    from ..report.results import render_text, write_results
    from ..runners.distributed import init_if_needed, output_lock
    from ..runners.evaluate import environment, evaluate_datasets

    if args.roi_dir is not None and not os.path.isdir(args.roi_dir):
        raise InvalidOptionError(f"--roi-dir {args.roi_dir}: not a folder")
    # the device used, not "auto", goes into results.json
    settings = resolved(config_from_args(args, EvalConfig))
    dist = init_if_needed(settings.device)  # under torchrun: join the job; else nothing
    ensure_out_dir(args.out)
    # one lock over the predictions and the result files: no other run writes between them
    # (under torchrun rank 0 holds it; every rank predicts its share, rank 0 writes the results)
    with output_lock(args.out, dist):
        results = evaluate_datasets(
            args.data, settings, args.out, progress=not args.quiet, lock=False
        )
        if not dist.is_main:
            return ExitCode.OK
        config = {"settings": settings.record(), "environment": environment()}
        config["settings"]["data"] = list(args.data)
        config["settings"]["mode"] = settings.scoring_mode  # the one used, not None
        if settings.shots:
            config["few_shot"] = few_shot_record(results)
        config.update(inspection_record(settings))
        with writing(args.out):
            files = write_results(results, args.out, config, args.cls)
    print(render_text(results, args.cls))
    if settings.shots:
        print(few_shot_note(results))
    print("written: " + ", ".join(str(f) for f in files))
    failed = sum(len(r.errors) for r in results)
    return ExitCode.SOME_FAILED if failed else ExitCode.OK


def inspection_record(settings) -> dict:
    """``results.json``'s ``config.tiling`` and ``config.roi``: what they changed (absent when
    not used)."""
    out: dict = {}
    if settings.tile is not None:
        out["tiling"] = {
            "tile": settings.tile,
            "overlap": settings.tile_overlap,
            "image_score": "max over the tiles of the CLS token's abnormal evidence + max of "
            "the blended map at full resolution",
            "maps": "blended at the original size (Hann window), resized to --image-size for "
            "the pixel metrics",
        }
    if settings.roi is not None or settings.roi_dir is not None:
        out["roi"] = {
            "roi": None if settings.roi is None else str(settings.roi),
            "roi_dir": None if settings.roi_dir is None else str(settings.roi_dir),
            "pixel_metrics": "pixels outside the ROI are left out of the pixel metrics (AUROC, "
            "AP, F1-max over the ROI's pixels; AUPRO over the parts of defect regions inside "
            "it and the normal pixels inside it)",
            "maps": "0 outside the ROI",
            "image_score": "tiled: tiles holding ROI pixels only, max of the map inside the ROI"
            if settings.tile is not None
            else "global (CLS) evidence of the whole image + max patch evidence over the patch "
            "cells at least half inside the ROI",
        }
    return out


def few_shot_record(results) -> dict:
    """``results.json``'s ``config.few_shot``: per dataset, each class's reference images
    (relative to the dataset root, in draw order) and bank digest, and the classes skipped."""
    return {
        r.name: {"classes": r.few_shot["classes"], "skipped": r.few_shot["skipped"]}
        for r in results
        if getattr(r, "few_shot", None)
    }


def few_shot_note(results) -> str:
    """One line per dataset: the protocol, and any class left out (with why)."""
    lines = []
    for r in results:
        shot = getattr(r, "few_shot", None)
        if not shot:
            continue
        line = (
            f"{r.name}: {shot['mode']}, {shot['shots']} reference image(s) per class from the "
            f"train split (seed {shot['shot_seed']}; listed in results.json)"
        )
        if shot["skipped"]:
            skipped = "; ".join(f"{c}: {why}" for c, why in shot["skipped"].items())
            line += f"; skipped: {skipped}"
        lines.append(line)
    return "\n".join(lines)
