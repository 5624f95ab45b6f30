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
    report_wanted,
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
        "train split as references; --profile DIR... scores each class with a profile against "
        "it (results.json lists both).",
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
    p.add_argument(
        "--no-report",
        action="store_true",
        help="do not write report.html (per class: image ROC and pixel PRO curves, the "
        "Table-1 row, the worst false positives and negatives; needs matplotlib: the report "
        "extra)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``eval``: check options, evaluate every dataset, write and print the results."""
    from ..errors import InvalidOptionError
    from ..report.eval_page import write_eval_report
    from ..report.html import remove_stale_report
    from ..report.results import render_text, write_results
    from ..runners.distributed import init_if_needed, output_lock
    from ..runners.evaluate import environment, evaluate_datasets

    if args.roi_dir is not None and not os.path.isdir(args.roi_dir):
        raise InvalidOptionError(f"--roi-dir {args.roi_dir}: not a folder")
    args.no_report = not report_wanted(args)
    # the device used, not "auto", goes into results.json
    settings = resolved(config_from_args(args, EvalConfig))
    dist = init_if_needed(settings.device)  # under torchrun: join the job; else nothing
    ensure_out_dir(args.out)
    # one lock over the predictions and the result files: no other run writes between them
    # (under torchrun rank 0 holds it; every rank predicts its share, rank 0 writes the results)
    with output_lock(args.out, dist):
        results = evaluate_datasets(
            args.data,
            settings,
            args.out,
            progress=not args.quiet,
            lock=False,
            plots=not args.no_report,
        )
        if not dist.is_main:
            return ExitCode.OK
        config = {"settings": settings.record(), "environment": environment()}
        config["settings"]["data"] = list(args.data)
        for field in ("few_shot", "profiles"):
            if any(getattr(r, field, None) for r in results):
                config[field] = references_record(results, field)
        config.update(inspection_record(settings))
        with writing(args.out):
            files = write_results(results, args.out, config, settings.cls)
            if not args.no_report:  # a resumed run writes it again, whole
                files.append(write_eval_report(args.out, results, settings.cls))
            else:
                remove_stale_report(args.out)
    print(render_text(results, settings.cls))
    if settings.shots or settings.profiles:
        print(references_note(results))
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


#: the entries of a result's ``few_shot`` / ``profiles`` that results.json records per dataset
#: (its mode, shots and seed are in the settings)
RECORDED = {"few_shot": ("classes", "skipped"), "profiles": ("classes", "zero_shot")}


def references_record(results, field: str) -> dict:
    """``results.json``'s ``config.few_shot`` or ``config.profiles``: per dataset, what each
    class was scored against (few-shot: its reference images, relative to the dataset root in
    draw order, and bank digest, and the classes skipped; profiles: its profile folder and
    bank digest, and the classes without one, scored zero-shot)."""
    return {
        r.name: {k: getattr(r, field)[k] for k in RECORDED[field]}
        for r in results
        if getattr(r, field, None)
    }


def references_note(results) -> str:
    """One line per dataset: the few-shot protocol and any class left out (with why), or the
    classes scored against profiles and those scored zero-shot."""
    lines = []
    for r in results:
        shot, given = getattr(r, "few_shot", None), getattr(r, "profiles", None)
        if shot:
            line = (
                f"{r.name}: {shot['mode']}, {shot['shots']} reference image(s) per class from "
                f"the train split (seed {shot['shot_seed']}; listed in results.json)"
            )
            if shot["skipped"]:
                skipped = "; ".join(f"{c}: {why}" for c, why in shot["skipped"].items())
                line += f"; skipped: {skipped}"
            lines.append(line)
        if given:
            line = f"{r.name}: {given['mode']} against the profiles of "
            line += ", ".join(given["classes"]) or "no class"
            if given["zero_shot"]:
                line += f"; zero-shot (no profile): {', '.join(given['zero_shot'])}"
            lines.append(line)
    return "\n".join(lines)
