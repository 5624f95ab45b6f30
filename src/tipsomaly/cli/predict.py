"""``tipsomaly predict PATH... --class-name NAME``: score images, write tables and heat maps."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

from ..errors import InvalidOptionError, OutputError
from ..method.config import MODES, DetectorConfig
from ..validation import float_type
from .exit_codes import ExitCode
from .options import (
    HelpFormatter,
    add_input_options,
    add_model_options,
    apply_input_options,
    build_detector,
    check_model_options,
    ensure_out_dir,
    image_threshold,
    non_empty,
    pixel_threshold,
    positive_float,
    positive_int,
)

#: predict's one departure from DetectorConfig: the fastest dtype this machine runs accurately
#: (eval and train keep fp32, the paper's numbers)
PREDICT_DTYPE = "auto"
#: the options whose default, with --profile, is the profile's (what its numbers depend on)
PROFILE_SETTINGS = (
    "model",
    "image_size",
    "prompt_type",
    "prompt_file",
    "pixel_prompts",
    "sigma",
    "cls",
)


def _from_profile(name: str) -> dict[str, Any]:
    """argparse overrides: no default (None), the help saying where the default comes from."""
    spec = {f.name: f for f in dataclasses.fields(DetectorConfig)}[name]
    shown = "none" if spec.default is None else spec.default
    help_text = spec.metadata["help"]
    return {
        "default": None,
        "help": f"{help_text} (default: {shown}; with --profile, the profile's)",
    }


def apply_profile_settings(args: argparse.Namespace) -> None:
    """Fill the model options not given: from the first ``--profile``'s settings, else the
    :class:`DetectorConfig` defaults. Options given keep their value (a profile fitted with
    another setup is refused when the detector is built, naming what differs)."""
    recorded: dict[str, Any] = {}
    if args.profile:
        from ..method.profile import read_record

        recorded = read_record(args.profile[0]).get("settings") or {}
    defaults = DetectorConfig()
    for name in PROFILE_SETTINGS:
        if getattr(args, name) is None:
            value = recorded.get(name, getattr(defaults, name))
            setattr(args, name, value)
    if hasattr(args, "tile"):  # predict's tiling: the profile's unless given
        apply_tile_settings(args, recorded)


def tile_option(text: str) -> int | str:
    """``--tile``: a side in pixels (>= 1) or ``auto``."""
    if text.strip().lower() == "auto":
        return "auto"
    return positive_int(text)


#: ``--tile-overlap``: the fraction of a tile neighbours share
tile_overlap_option = float_type(0, 0.9, hint="a fraction of a tile, e.g. 0.25")


def apply_tile_settings(args: argparse.Namespace, recorded: dict[str, Any]) -> None:
    """``--tile`` / ``--tile-overlap`` not given: the profile's (a profile fitted with tiles
    is used with the same tiles), else untiled / 0.25."""
    from ..method.tiling import DEFAULT_OVERLAP

    if args.tile is None:
        args.tile = recorded.get("tile")
    if args.tile_overlap is None:
        overlap = recorded.get("tile_overlap")
        args.tile_overlap = DEFAULT_OVERLAP if overlap is None else overlap


def add_tile_options(p: argparse.ArgumentParser, profile_note: bool = True) -> None:
    """``--tile`` and ``--tile-overlap`` (predict, fit)."""
    from_profile = "; with --profile, the profile's" if profile_note else ""
    p.add_argument(
        "--tile",
        type=tile_option,
        metavar="SIZE|auto",
        help="tiled inference at native resolution for large images with small defects: "
        "overlapping tiles of SIZE original pixels, each resized to --image-size, maps "
        "blended back into one map at the original size; auto: tiles of --image-size pixels, "
        f"larger when that takes more than 64 tiles (default: untiled{from_profile})",
    )
    p.add_argument(
        "--tile-overlap",
        type=tile_overlap_option,
        metavar="F",
        help=f"least fraction of a tile that neighbouring tiles share (default: 0.25"
        f"{from_profile})",
    )


_EPILOG = """\
outputs (in --out):
  scores.csv           path, class_name, image_score, score_cls1, score_cls2,
                       [is_anomalous], [threshold, mode: with --profile], status
                       (ok|error), error, name; one row per input,
                       written as each image is scored (an interrupted run keeps its rows)
  scores.json          the same rows + summary + settings, written at the end
  overlays/NAME.png    heat map over the image at its original size (jet: blue = 0,
                       green = 0.5, red = 1; see --overlay-scale)
  masks/NAME.png       0/255 mask of map >= --threshold        (with --threshold, or
                       a profile's calibrated pixel threshold)
  maps/NAME.npy        raw map, float32 HxW, original size      (with --save-maps)
  defects.csv          one row per defect: connected region of map >= the pixel threshold
                       (with one): box x0,y0,x1,y1 (original pixels, ends excluded), area
                       (px, mm2 with --pixel-size-mm), peak, mean, centroid; also the
                       "defects" list of each scores.json row (and boxes on the
                       overlays, unless --no-boxes)
  defects_coco.json    the defects as COCO results with RLE masks (--defects-format coco)
NAME is the image's path relative to the deepest folder holding all inputs, without its
extension (a/x.png -> a/x), so same-named files in different folders do not collide; two
inputs differing only by extension keep it (x.png, x.jpg).
scores: image_score in [0, 2] and the maps (abnormal probability per pixel, in [0, 1]);
higher = more anomalous. With --tile: max over the tiles of the CLS evidence + max of the
blended map. With --roi/--roi-dir: maps are 0 outside the ROI and the score takes only ROI
evidence (scores.json's settings.image_score says exactly how).
exit status: 0 all images scored, 3 some could not be read (their rows say why),
2 no input images found, 1 model/prompt/option/output errors, 130 interrupted.
Every option is checked before the model loads (one line per mistake, exit status 1)."""


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..report.overlay import OVERLAY_SCALES

    p = sub.add_parser(
        "predict",
        parents=[common],
        help="score images and write anomaly scores, heat-map overlays and masks",
        description="Zero-shot anomaly detection: an image score and a heat map for every "
        "image, given the name of what the images show.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "paths",
        nargs="+",
        metavar="PATH",
        help="image files, folders (searched recursively for image files) or glob patterns "
        "(quote them to let tipsomaly expand them; ** recurses)",
    )
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--class-name",
        type=non_empty,
        help='what the images show, e.g. "hazelnut" or "metal nut"',
    )
    who.add_argument(
        "--class-from-folder",
        action="store_true",
        help="use each image's parent folder name as its class (bottle/001.png -> bottle)",
    )
    add_model_options(
        p,
        dtype={"default": PREDICT_DTYPE},
        **{name: _from_profile(name) for name in PROFILE_SETTINGS},
    )
    add_input_options(p)
    p.add_argument(
        "--profile",
        nargs="+",
        action="extend",
        metavar="DIR",
        help="few-shot profiles from `tipsomaly fit` (several: chosen by class name): adds "
        "is_anomalous, threshold and mode columns at the profile's calibrated false-alarm "
        "rate and writes masks at its pixel threshold; the model options default to the "
        "profile's",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        help="with --profile: zero-shot (prompts only), few-shot (distance to the profile's "
        "normal references) or fused (their mean) (default: fused)",
    )
    p.add_argument(
        "--threshold",
        type=pixel_threshold,
        help="pixel threshold on the maps (abnormal probability, [0, 1]): writes "
        "masks/NAME.png = map >= threshold",
    )
    p.add_argument(
        "--image-threshold",
        type=image_threshold,
        help="image-score threshold (scores in [0, 2]): adds the column is_anomalous = "
        "image_score >= threshold",
    )
    p.add_argument(
        "--save-maps", action="store_true", help="also write maps/NAME.npy (float32, original size)"
    )
    add_tile_options(p)
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--roi",
        metavar="PATH",
        help="region-of-interest mask for every image (white = inspect, black = ignore, e.g. "
        "fixtures, labels, background); resized to each image when sizes differ (noted)",
    )
    where.add_argument(
        "--roi-dir",
        metavar="DIR",
        help="a folder of per-image ROI masks: DIR/NAME.<ext> (NAME as the outputs'), else "
        "DIR/<file stem>.<ext>; an image without one is an error row",
    )
    p.add_argument(
        "--min-defect-area",
        type=positive_int,
        default=1,
        metavar="PX",
        help="drop defect regions smaller than PX pixels (specks)",
    )
    p.add_argument(
        "--pixel-size-mm",
        type=positive_float,
        metavar="MM",
        help="side of one pixel in mm: defect areas also in mm2",
    )
    p.add_argument(
        "--defects-format",
        choices=("records", "coco"),
        default="records",
        help="records: defects in scores.json and defects.csv; coco: also each defect's mask "
        "as COCO RLE (in scores.json and defects_coco.json)",
    )
    p.add_argument(
        "--boxes",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="draw each defect's box on its overlay, labelled '#<number> <peak>' (there are "
        "defects only with a pixel threshold: --threshold or a profile's)",
    )
    p.add_argument("--no-overlays", action="store_true", help="do not write overlays/NAME.png")
    p.add_argument(
        "--overlay-scale",
        choices=OVERLAY_SCALES,
        help="map values -> colours: fixed = [0, 1] absolute, comparable across images "
        "(default); per-image = each map's own min..max (shows where, not how much); "
        "threshold = the pixel threshold (--threshold or the profile's) is the middle "
        "colour (green), twice it red (default with --profile)",
    )
    p.add_argument("--out", default="tipsomaly-out", help="output folder (default: tipsomaly-out)")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    """Run ``predict``: check options, find the inputs, load the model, score, report."""
    from ..data.inputs import NoInputsError, expand_inputs
    from ..runners.distributed import init_if_needed
    from ..runners.predict import run_predict
    from .export import exported_model

    exported = exported_model(args)  # --model EXPORT_DIR: the exported graph, settings its own
    if exported is not None:
        given = [o for o, v in (("--tile", args.tile), ("--roi", args.roi)) if v is not None]
        given += ["--roi-dir"] if args.roi_dir is not None else []
        if given:
            raise InvalidOptionError(
                f"{', '.join(given)}: an exported graph scores whole images; use the model "
                "itself (a preset or model directory) for tiles and regions of interest"
            )
    # options first, inputs next: no model download before we know the settings work and
    # there is something to score
    if args.mode is not None and not args.profile:
        raise InvalidOptionError("--mode needs --profile (without one, predict is zero-shot)")
    apply_profile_settings(args)
    if args.roi is not None:  # read before the model loads: one line if it cannot be used
        from ..data.roi import check_roi_file

        check_roi_file(args.roi)
    if args.roi_dir is not None and not Path(args.roi_dir).is_dir():
        raise InvalidOptionError(f"--roi-dir {args.roi_dir}: not a folder")
    if args.overlay_scale is None:
        args.overlay_scale = "threshold" if args.profile else "fixed"
    if args.profile and args.class_name:
        from ..method.profile import ProfileError, read_record

        fitted = {read_record(folder)["class_name"] for folder in args.profile}
        if args.class_name not in fitted:
            raise ProfileError(
                f"no profile for class {args.class_name!r} (profiles: "
                f"{', '.join(map(repr, sorted(fitted)))}); fit one with `tipsomaly fit` or "
                "leave out --profile"
            )
    device, dtype = (exported.device, exported.dtype) if exported else check_model_options(args)
    dist = init_if_needed(device)  # under torchrun: join the job (each rank scores a share)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise OutputError(args.out, "exists and is not a folder")
    files = expand_inputs(args.paths, exclude=[args.out])
    if not files:
        print(f"tipsomaly: error: {NoInputsError(args.paths)}", file=sys.stderr)
        return ExitCode.NO_INPUTS
    ensure_out_dir(args.out)  # read-only, full, or under a file: one line before the model
    apply_input_options(args)
    # prompt, pixel-prompt and model-file problems are TipsomalyErrors: main() shows them
    detector = exported or build_detector(
        args,
        device,
        dtype,
        profile=args.profile,
        mode=args.mode,
        tile=args.tile,
        tile_overlap=args.tile_overlap,
    )
    try:
        summary = run_predict(
            detector,
            files,
            class_name=args.class_name,
            class_from_folder=args.class_from_folder,
            out_dir=args.out,
            threshold=args.threshold,
            image_threshold=args.image_threshold,
            save_maps=args.save_maps,
            overlays=not args.no_overlays,
            overlay_scale=args.overlay_scale,
            progress=not args.quiet,
            settings={
                "device": str(device),
                "dtype": str(dtype).removeprefix("torch."),
                "max_pixels": args.max_pixels,
            },
            roi=args.roi,
            roi_dir=args.roi_dir,
            min_defect_area=args.min_defect_area,
            pixel_size_mm=args.pixel_size_mm,
            defects_format=args.defects_format,
            boxes=args.boxes,
        )
    except NoInputsError as exc:
        print(f"tipsomaly: error: {exc}", file=sys.stderr)
        return ExitCode.NO_INPUTS
    except KeyboardInterrupt:
        print(
            f"tipsomaly: interrupted; the images scored so far are in {args.out}/scores.csv "
            "and scores.json",
            file=sys.stderr,
        )
        return ExitCode.INTERRUPTED
    if not dist.is_main:  # rank 0 merged every rank's rows and reports them
        return ExitCode.OK
    print(f"{summary.images} image(s): {summary.ok} ok, {summary.failed} failed")
    outputs = [summary.csv_path.name, summary.json_path.name]
    if not args.no_overlays and summary.ok:
        outputs.append("overlays/")
    if summary.ok and (args.threshold is not None or detector.profiles):
        outputs.append("masks/")
    if args.save_maps and summary.ok:
        outputs.append("maps/")
    if summary.ok and (args.threshold is not None or detector.profiles):
        outputs.append("defects.csv")
        if args.defects_format == "coco":
            outputs.append("defects_coco.json")
    print(f"outputs in {summary.out_dir}/: {', '.join(outputs)}")
    if summary.failed:
        failed = summary.failed_paths
        shown = ", ".join(failed[:10]) + (
            f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        )
        print(f"failed (see the error column of scores.csv): {shown}")
        return ExitCode.SOME_FAILED
    return ExitCode.OK
