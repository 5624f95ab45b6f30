"""``tipsomaly predict PATH... --class-name NAME``: score images, write tables and heat maps."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import InvalidOptionError, OutputError
from .exit_codes import ExitCode
from .options import (
    DEFAULTS,
    RECORDED,
    HelpFormatter,
    add_config_option,
    add_settings,
    check_mode,
    config_from_args,
    ensure_out_dir,
    given_settings,
    non_empty,
    open_predictor,
    report_wanted,
    resolved,
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
  report.html          the run in a browser (no server, no network): images most anomalous
                       first with thumbnails, decisions and defect boxes, filters by class
                       and decision, a score histogram with the threshold, counts; its
                       pictures in report-assets/ (--no-report: neither)
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
    from ..method.config import DetectorConfig
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
        "--class-name", type=non_empty, help='what the images show, e.g. "hazelnut" or "metal nut"'
    )
    who.add_argument(
        "--class-from-folder",
        action="store_true",
        help="use each image's parent folder name as its class (bottle/001.png -> bottle)",
    )
    add_settings(p, skip=("roi",), defaults=DEFAULTS, recorded_note=RECORDED)
    where = p.add_mutually_exclusive_group()
    add_config_option(where, DetectorConfig, "roi", note=RECORDED)
    where.add_argument(
        "--roi-dir",
        metavar="DIR",
        help="a folder of per-image ROI masks: DIR/NAME.<ext> (NAME as the outputs'), else "
        "DIR/<file stem>.<ext>; an image without one is an error row",
    )
    p.add_argument(
        "--save-maps", action="store_true", help="also write maps/NAME.npy (float32, original size)"
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
        "--no-report",
        action="store_true",
        help="do not write report.html and its thumbnails (the report needs matplotlib: "
        "the report extra)",
    )
    p.add_argument(
        "--overlay-scale",
        choices=OVERLAY_SCALES,
        help="map values -> colours: fixed = [0, 1] absolute, comparable across images "
        "(default); per-image = each map's own min..max (shows where, not how much); "
        "threshold = the pixel threshold (--threshold or the profile's) is the middle "
        "colour (green), twice it red (default with --profile)",
    )
    p.add_argument("--out", default="tipsomaly-out", help="output folder (default: tipsomaly-out)")
    records = p.add_argument_group("records (pip install 'tipsomaly[records]')")
    records.add_argument(
        "--db",
        metavar="URL",
        help="also store one record per scored image in this records database (a SQLite file "
        "path or postgresql://...), as serve --db does; each is committed before its row",
    )
    records.add_argument(
        "--keep-images",
        metavar="DIR",
        help="with --db: keep each image and its map in DIR, named by SHA-256",
    )
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    """Run ``predict``: check options, find the inputs, load the model, score, report."""
    from ..data.inputs import NoInputsError, expand_inputs
    from ..runners.distributed import init_if_needed
    from ..runners.predict import run_predict

    # options first, inputs next: no model download before we know the settings work and
    # there is something to score
    check_mode(args, "predict")
    if args.roi_dir is not None and not Path(args.roi_dir).is_dir():
        raise InvalidOptionError(f"--roi-dir {args.roi_dir}: not a folder")
    args.no_report = not report_wanted(args)
    config = resolved(config_from_args(args, defaults=DEFAULTS))
    if config.profiles and args.class_name is not None:
        _check_profile_class(config.profiles, args.class_name)
    dist = init_if_needed(config.device)  # under torchrun: join the job (each rank a share)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise OutputError(args.out, "exists and is not a folder")
    files = expand_inputs(args.paths, exclude=[args.out])
    if not files:
        raise NoInputsError(args.paths)  # main() says so, exit status 2
    ensure_out_dir(args.out)  # read-only, full, or under a file: one line before the model
    if args.keep_images is not None and args.db is None:
        raise InvalidOptionError("--keep-images needs --db (the records name the images)")
    records = None
    if args.db is not None:  # a database that cannot be used: one line before the model
        from ..runners.recording import PredictRecords

        records = PredictRecords(args.db, args.keep_images)
    # prompt, pixel-prompt and model-file problems are TipsomalyErrors: main() shows them
    predictor = open_predictor(config, given_settings(args), args.class_name)
    overlay_scale = args.overlay_scale or ("threshold" if predictor.profile_classes() else "fixed")
    try:
        summary = run_predict(
            predictor,
            files,
            class_name=args.class_name,
            class_from_folder=args.class_from_folder,
            out_dir=args.out,
            save_maps=args.save_maps,
            overlays=not args.no_overlays,
            overlay_scale=overlay_scale,
            progress=not args.quiet,
            roi_dir=args.roi_dir,
            boxes=args.boxes,
            records=records,
            report=not args.no_report,
        )
    except KeyboardInterrupt:
        print(
            f"tipsomaly: interrupted; the images scored so far are in {args.out}/scores.csv "
            "and scores.json",
            file=sys.stderr,
        )
        return ExitCode.INTERRUPTED
    finally:
        if records is not None:
            records.close()
    if not dist.is_main:  # rank 0 merged every rank's rows and reports them
        return ExitCode.OK
    print(f"{summary.images} image(s): {summary.ok} ok, {summary.failed} failed")
    outputs = [summary.csv_path.name, summary.json_path.name]
    if not args.no_overlays and summary.ok:
        outputs.append("overlays/")
    with_pixel = predictor.config.pixel_threshold is not None or predictor.profile_classes()
    if summary.ok and with_pixel:
        outputs.append("masks/")
    if args.save_maps and summary.ok:
        outputs.append("maps/")
    if summary.ok and with_pixel:
        outputs.append("defects.csv")
        if predictor.config.defects_format == "coco":
            outputs.append("defects_coco.json")
    if not args.no_report:
        outputs.append("report.html")
    print(f"outputs in {summary.out_dir}/: {', '.join(outputs)}")
    if records is not None:
        print(f"{records.written} record(s) in {records.store.shown}")
    if summary.failed:
        failed = summary.failed_paths
        shown = ", ".join(failed[:10]) + (
            f" and {len(failed) - 10} more" if len(failed) > 10 else ""
        )
        print(f"failed (see the error column of scores.csv): {shown}")
        return ExitCode.SOME_FAILED
    return ExitCode.OK


def _check_profile_class(profiles: tuple, class_name: str) -> None:
    """A class without a profile among several is refused before the model loads."""
    from ..method.profile import ProfileError, read_record

    fitted = {read_record(folder)["class_name"] for folder in profiles}
    if class_name not in fitted:
        raise ProfileError(
            f"no profile for class {class_name!r} (profiles: "
            f"{', '.join(map(repr, sorted(fitted)))}); fit one with `tipsomaly fit` or "
            "leave out --profile"
        )
