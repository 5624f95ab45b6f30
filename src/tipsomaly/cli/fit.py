"""``tipsomaly fit PATH... --class-name NAME --out DIR``: a profile from known-good images."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError, OutputError
from ..method.config import (
    DEFAULT_FALSE_ALARM_RATE,
    DEFAULT_MAX_BANK,
    DEFAULT_PIXEL_FALSE_ALARM_RATE,
    MODES,
)
from ..validation import float_type
from .exit_codes import ExitCode
from .options import (
    DECISION_SETTINGS,
    DEFAULTS,
    ENGINE_SETTINGS,
    HelpFormatter,
    add_settings,
    config_from_args,
    ensure_out_dir,
    non_empty,
    open_predictor,
    positive_int,
    report_wanted,
    resolved,
    seed_int,
)

#: settings that decide with a profile, not fit one
NOT_FITTING = ("mode", *DECISION_SETTINGS, *ENGINE_SETTINGS)

rate = float_type(0, 1, low_open=True, high_open=True, hint="a fraction, e.g. 0.01 = 1 in 100")

_EPILOG = """\
what it does:
  Reads normal (defect-free) images of one class and writes a profile: a memory bank of
  their TIPS patch features (few-shot evidence: distance to the nearest normal patch) and
  thresholds calibrated so that, on new normal images like these, at most a fraction
  --false-alarm-rate is flagged. Each reference is scored against the bank without it
  (leave-one-out); the image threshold is the ceil((n+1)(1-A))-th smallest of those n
  scores, which bounds the false-alarm rate by A whatever the score (for images that are
  exchangeable with the references: same product, camera and lighting). With n references
  the smallest rate that can be guaranteed is 1/(n+1): A = 0.01 needs 99 references; with
  fewer, the threshold is their highest score and the output says which rate it guarantees.
  One reference gives a bank but only the zero-shot mode is calibrated.
  With --tile, every tile of every reference goes into the bank and each reference is
  scored as a tiled prediction; predict --profile then uses the same tiles.
outputs (in --out):
  profile.json       class, counts, settings, thresholds per mode, versions
  bank.safetensors   the references' features
  calibration.csv    each reference's leave-one-out score per mode
  references/        a copy of each reference image (by SHA-256), for `profile update`
  report.html        the references as thumbnails with their leave-one-out scores, worst
                     first; the scores' histogram with the threshold and the rate it
                     guarantees; outliers (--no-report: none)
outliers: a reference whose leave-one-out score is far above the others' (robust z-score
  (score - median) / max(1.4826 MAD, 0.01) > 3.5, with 4 or more references) is named in a
  warning and in the report: it may be defective or unlike the others; look at it.
use it:
  tipsomaly predict IMAGES --profile DIR   (adds is_anomalous, threshold, mode; masks at
                                            the calibrated pixel threshold)
exit status: 0 done, 3 some references could not be read (the rest were used),
2 no input images found, 1 errors (no usable reference, options, output), 130 interrupted."""


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "fit",
        parents=[common],
        help="learn a class's normal look from a few good images: a profile with calibrated "
        "thresholds",
        description="Few-shot profile of one class from known-good images: a memory bank of "
        "normal patch features and image/pixel thresholds at a chosen false-alarm rate.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="normal images: files, folders (searched recursively) or glob patterns",
    )
    p.add_argument(
        "--class-name", type=non_empty, required=True, help='what the images show, e.g. "tile"'
    )
    p.add_argument("--out", required=True, help="the profile folder to write")
    add_settings(
        p,
        skip=NOT_FITTING,
        defaults=DEFAULTS,
        recorded_note="with --profile, the profile's",
        profiles={
            "help": "fit with the settings of these profiles (the first one's: model, size, "
            "prompts, sigma, CLS token, tiling, ROI): a new profile of the same setup",
            "nargs": 1,
        },
    )
    p.add_argument(
        "--false-alarm-rate",
        type=rate,
        default=DEFAULT_FALSE_ALARM_RATE,
        metavar="A",
        help="image threshold: at most this fraction of new normal images flagged",
    )
    p.add_argument(
        "--pixel-false-alarm-rate",
        type=rate,
        default=DEFAULT_PIXEL_FALSE_ALARM_RATE,
        metavar="A",
        help="pixel threshold for masks: this fraction of the references' pixels above it",
    )
    p.add_argument(
        "--augment",
        action="store_true",
        help="also put each reference's 8 flips and 90-degree rotations in the bank (for "
        "products that appear rotated; 8x the fitting time)",
    )
    p.add_argument(
        "--max-bank",
        type=positive_int,
        default=DEFAULT_MAX_BANK,
        metavar="N",
        help="patch features kept; above N the bank is a greedy k-centre coreset of N "
        "(a 518-px reference makes 1369; the coreset keeps the search of a new image under "
        "10 %% of a B/14 forward)",
    )
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the coreset")
    p.add_argument(
        "--no-report",
        action="store_true",
        help="do not write report.html (the report needs matplotlib: the report extra)",
    )
    p.set_defaults(func=cmd_fit)


def cmd_fit(args: argparse.Namespace) -> int:
    """Run ``fit``: check options, find the references, load the model, fit, report."""
    from ..data.inputs import NoInputsError, expand_inputs
    from ..deploy.metadata import is_export_dir
    from ..runners.fit import run_fit

    args.no_report = not report_wanted(args)

    # a profile given lends its settings; the new one is fitted without scoring against it
    config = resolved(config_from_args(args, defaults=DEFAULTS)).replace(profiles=())
    if is_export_dir(config.model):
        raise InvalidOptionError(
            f"--model {config.model} is an export: fit a profile with the model itself (a "
            "preset or model folder), then export it with --profile"
        )
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise OutputError(args.out, "exists and is not a folder")
    files = expand_inputs(args.paths, exclude=[args.out])
    if not files:
        raise NoInputsError(args.paths)  # main() says so, exit status 2
    ensure_out_dir(args.out)
    detector = open_predictor(config, {})
    settings = {"dtype": config.dtype, "device": config.device}
    try:
        summary = run_fit(
            detector,
            files,
            class_name=args.class_name,
            out_dir=args.out,
            false_alarm_rate=args.false_alarm_rate,
            pixel_false_alarm_rate=args.pixel_false_alarm_rate,
            augment=args.augment,
            max_bank=args.max_bank,
            seed=args.seed,
            progress=not args.quiet,
            settings=settings,
            report=not args.no_report,
        )
    except KeyboardInterrupt:
        print("tipsomaly: interrupted; no profile written", file=sys.stderr)
        return ExitCode.INTERRUPTED
    _report(summary)
    return ExitCode.SOME_FAILED if summary.failed else ExitCode.OK


def _report(summary: Any) -> None:
    profile = summary.profile
    bank = profile.info["bank"]
    coreset = f" (coreset of {bank['patches_before_coreset']})" if bank["coreset"] else ""
    print(
        f"profile of {profile.class_name!r}: {summary.references} reference image(s), "
        f"{bank['patches']} patch features{coreset} -> {summary.out_dir}/"
    )
    for mode in MODES:
        image = profile.thresholds.get(mode, "image")
        pixel = profile.thresholds.get(mode, "pixel")
        if image is None:
            print(f"  {mode:9s}  not calibrated (needs 2 or more reference images)")
            continue
        print(
            f"  {mode:9s}  image threshold {image.threshold:.6f}, pixel threshold "
            f"{pixel.threshold:.6f}" + ("" if image.attainable else "  [see below]")
        )
    first = profile.thresholds.get("zero-shot", "image")
    if first is not None:
        print(f"image thresholds: {first.note}")
    print(f"default mode with this profile: {profile.mode}")
    if summary.failed:
        shown = ", ".join(p for p, _ in summary.failed[:10])
        more = len(summary.failed) - 10
        print(
            f"could not read {len(summary.failed)} reference(s) (left out): {shown}"
            + (f" and {more} more" if more > 0 else "")
        )
