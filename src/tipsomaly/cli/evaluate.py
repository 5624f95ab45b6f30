"""``tipsomaly eval``: the paper's Table 1 for one or several datasets with a ``meta.json``."""

from __future__ import annotations

import argparse
import os

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
    writing,
)


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..runners.config import EvalConfig

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
    add_model_options(p, EvalConfig)
    add_input_options(p)
    add_config_option(p, EvalConfig, "allow_outside_root")
    add_config_option(p, EvalConfig, "classes", nargs="+")
    add_config_option(p, EvalConfig, "workers")
    add_config_option(p, EvalConfig, "aupro")
    add_config_option(p, EvalConfig, "shots")
    add_config_option(p, EvalConfig, "shot_seed", metavar="SEED")
    add_config_option(p, EvalConfig, "mode")
    from .predict import tile_option, tile_overlap_option

    add_config_option(p, EvalConfig, "tile", type=tile_option)
    add_config_option(p, EvalConfig, "tile_overlap", type=tile_overlap_option)
    where = p.add_mutually_exclusive_group()
    add_config_option(where, EvalConfig, "roi")
    add_config_option(where, EvalConfig, "roi_dir")
    p.add_argument("--out", default="tipsomaly-eval", help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``eval``: check options, evaluate every dataset, write and print the results."""
    from ..report.results import render_text, write_results
    from ..runners.distributed import init_if_needed, output_lock
    from ..runners.evaluate import EvalConfig, environment, evaluate_datasets

    device, dtype = check_model_options(args)  # before any model loads
    check_roi_options(args)
    dist = init_if_needed(device)  # under torchrun: join the job; else nothing
    ensure_out_dir(args.out)
    apply_input_options(args)
    settings = EvalConfig(
        model=args.model,
        pixel_prompts=args.pixel_prompts,  # "none" → None; "auto": per dataset
        prompt_type=args.prompt_type,
        prompt_file=args.prompt_file,
        image_size=args.image_size,
        sigma=args.sigma,
        cls=args.cls,
        device=str(device),  # the device used, not "auto", goes into results.json
        dtype=dtype_name(dtype),
        batch_size=args.batch_size,
        workers=args.workers,
        aupro=args.aupro,
        classes=args.classes,
        offline=args.offline or None,
        allow_outside_root=args.allow_outside_root,
        shots=args.shots,
        shot_seed=args.shot_seed,
        mode=args.mode,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
        roi=args.roi,
        roi_dir=args.roi_dir,
    )
    # one lock over the predictions and the result files: no other run writes between them
    # (under torchrun rank 0 holds it; every rank predicts its share, rank 0 writes the results)
    with output_lock(args.out, dist):
        results = evaluate_datasets(
            args.data, settings, args.out, progress=not args.quiet, lock=False
        )
        if not dist.is_main:
            return ExitCode.OK
        config = {
            "settings": vars(settings) | {"classes": args.classes, "max_pixels": args.max_pixels},
            "environment": environment(),
        }
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


def check_roi_options(args: argparse.Namespace) -> None:
    """``--roi`` readable and not empty, ``--roi-dir`` a folder: one line before the model."""
    from ..errors import InvalidOptionError

    if args.roi is not None:
        from ..data.roi import check_roi_file

        check_roi_file(args.roi)
    if args.roi_dir is not None and not os.path.isdir(args.roi_dir):
        raise InvalidOptionError(f"--roi-dir {args.roi_dir}: not a folder")


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
