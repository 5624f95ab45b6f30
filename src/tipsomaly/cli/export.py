"""``tipsomaly export --class-name NAME --format onnx|openvino --out DIR``: the method as one
graph for ONNX Runtime or OpenVINO, and ``predict --model DIR``'s side of it."""

from __future__ import annotations

import argparse
import shlex
from typing import Any

from ..errors import InvalidOptionError, require
from .exit_codes import ExitCode
from .options import (
    HelpFormatter,
    add_settings,
    check_mode,
    config_from_args,
    ensure_out_dir,
    non_empty,
    open_predictor,
    positive_int,
    resolved,
)

#: what a graph does not hold: how it is run is predict's (or serve's) business
NOT_EXPORTED = (
    "engine",
    "device",
    "dtype",
    "batch_size",
    "max_pixels",
    "min_defect_area",
    "pixel_size_mm",
    "defects_format",
)

FORMAT_CHOICES = ("onnx", "openvino")

_EPILOG = """\
what it does:
  Computes the class's text embeddings once and exports the vision tower plus TipsOmaly's
  scoring as one fp32 graph: input "images" (B, 3, S, S) float32 RGB in [0, 1] (PIL bilinear
  resize of the whole image to S x S, /255, no mean/std); outputs image_score, score_cls1,
  score_cls2 (B) and anomaly_map (B, S, S); with --profile also pred_label (B) and pred_mask
  (B, S, S) at the profile's calibrated thresholds, its memory bank inside the graph. The
  batch size B is free. The graph is checked against PyTorch on two random images.
outputs (in --out):
  model.onnx            --format onnx (ONNX opset 18)
  model.xml, model.bin  --format openvino (OpenVINO IR, converted from the ONNX graph)
  export.json           class, model fingerprint, prompts, image size, sigma, cls, mode,
                        thresholds, preprocessing, graph inputs/outputs, measured parity
                        with PyTorch, versions
run it:
  tipsomaly predict IMAGES --model DIR --class-name NAME   (same outputs as with the model;
  needs tipsomaly[onnx] or tipsomaly[openvino])
exit status: 0 exported, 1 errors (options, model, missing extra, output)."""


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser(
        "export",
        parents=[common],
        help="export the detector for one class to ONNX or OpenVINO (one fp32 graph)",
        description="Export TipsOmaly for one class at one image size as a single graph, "
        "from image batch to image scores and anomaly maps, for ONNX Runtime or OpenVINO.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--class-name",
        type=non_empty,
        help='what the images show, e.g. "screw" (default with --profile: the profile\'s)',
    )
    p.add_argument(
        "--format",
        choices=FORMAT_CHOICES,
        default="onnx",
        help="onnx (model.onnx, tipsomaly[onnx]) or openvino (model.xml/.bin, tipsomaly[openvino])",
    )
    p.add_argument("--out", required=True, help="the export folder to write")
    add_settings(p, skip=NOT_EXPORTED, recorded_note="with --profile, the profile's")
    p.add_argument(
        "--opset", type=positive_int, default=18, help="ONNX opset of the graph (18 or newer)"
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``export``: check options, load the model (and profile), export, report."""
    from ..deploy.metadata import is_export_dir
    from ..method.profile import ProfileError, read_record

    check_mode(args, "the export")
    if args.opset < 18:
        raise InvalidOptionError(f"--opset {args.opset}: torch's exporter writes opset 18 or newer")
    precision = args.precision or "fp32"
    if precision == "bf16":
        raise InvalidOptionError(
            "--precision bf16: an export is fp32 or int8 (bf16 is how OpenVINO runs an fp32 "
            "graph: predict --engine openvino --precision bf16)"
        )
    if precision == "int8" and not args.profiles and args.calibration_images is None:
        raise InvalidOptionError(
            "--precision int8 needs calibration images: give --profile DIR (its references) "
            "or --calibration-images DIR"
        )
    # an export is traced in fp32 on the CPU
    config = resolved(config_from_args(args, device="cpu", dtype="fp32", precision=None))
    if is_export_dir(config.model):
        raise InvalidOptionError(f"--model {config.model} is an export already")
    if config.profiles:
        fitted = {read_record(p)["class_name"] for p in config.profiles}
        if args.class_name is None and len(fitted) == 1:
            args.class_name = next(iter(fitted))
        elif args.class_name not in fitted:
            raise ProfileError(
                f"{', '.join(map(str, config.profiles))} is a profile of "
                f"{', '.join(map(repr, sorted(fitted)))}, not {args.class_name!r}: give "
                "--class-name or fit a profile of that class"
            )
    if args.class_name is None:
        raise InvalidOptionError("give --class-name (the class the export is for) or --profile")
    ensure_out_dir(args.out)
    for module in ("onnx", "onnxscript", *(("openvino",) if args.format == "openvino" else ())):
        require(module, args.format, f"exporting to {args.format}")
    from ..deploy.export import export

    calibration = None
    if precision == "int8" and config.calibration_images is not None:
        from ..deploy.quantize import image_files

        calibration = [str(p) for p in image_files(config.calibration_images)]
        if not calibration:
            raise InvalidOptionError(
                f"--calibration-images {config.calibration_images}: no image files there"
            )
    detector = open_predictor(config, {})
    if precision == "int8" and calibration is None:
        from ..deploy.export import reference_files

        calibration = reference_files(detector.profiles[args.class_name])
    result = export(
        detector,
        args.class_name,
        args.out,
        args.format,
        opset=args.opset,
        precision=precision,
        calibration=calibration,
    )
    _report(result)
    return ExitCode.OK


def _report(result: Any) -> None:
    r = result.record
    graph = r["graph"]
    files = ", ".join(sorted(graph["sha256"]))
    print(
        f"exported {r['class_name']!r} ({r['mode']}, {r['settings']['image_size']} px, "
        f"{r['identity']['model']['name']}) "
        f"as {graph['format']} ({graph['precision']}, opset {graph['opset']}) -> "
        f"{result.folder}/: {files}, "
        "export.json"
    )
    print(f"outputs: {', '.join(o['name'] for o in graph['outputs'])}")
    if graph["precision"] == "int8":
        p, q = r["parity"], r["quantization"]["calibration"]
        rho = p["image_score_spearman"]
        print(
            f"int8 against fp32 on the {q['images']} calibration image(s) (digest "
            f"{q['digest'][:12]}): max map error {p['map_max_error']:.3g}, image-score "
            f"Spearman {'n/a (fewer than 3 images)' if rho is None else f'{rho:.4f}'}"
        )
        if r["thresholds"].get("calibration"):
            print("thresholds recalibrated with the int8 graph on the profile's references")
    elif result.parity is not None:
        scores = max(result.parity[n] for n in ("image_score", "score_cls1", "score_cls2"))
        print(
            f"checked against PyTorch on 2 images: max |difference| {scores:.2g} on the "
            f"scores, {result.parity['anomaly_map']:.2g} on the maps"
        )
    th = r["thresholds"]
    names = {o["name"] for o in graph["outputs"]}

    def where(output: str) -> str:  # an int8 graph with a profile decides nothing itself
        return output if output in names else "applied by predict"

    if th["image"] is not None:
        print(f"image threshold {th['image']['threshold']:.6f} ({where('pred_label')})", end="")
        if th["pixel"] is not None:
            print(
                f", pixel threshold {th['pixel']['threshold']:.6f} ({where('pred_mask')})", end=""
            )
        print()
    print(
        f"run it: tipsomaly predict IMAGES --model {result.folder} --class-name "
        f"{shlex.quote(r['class_name'])}"
    )
