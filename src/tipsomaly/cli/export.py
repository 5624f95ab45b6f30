"""``tipsomaly export --class-name NAME --format onnx|openvino --out DIR``: the method as one
graph for ONNX Runtime or OpenVINO, and ``predict --model DIR``'s side of it."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from ..errors import InvalidOptionError, OutputError
from ..method.config import MODES
from .exit_codes import ExitCode
from .options import (
    HelpFormatter,
    add_model_options,
    ensure_out_dir,
    non_empty,
    positive_int,
)
from .predict import PROFILE_SETTINGS, _from_profile, apply_profile_settings

if TYPE_CHECKING:
    from ..deploy.inferencers import ExportedDetector

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
        "--profile",
        metavar="DIR",
        help="a few-shot profile from `tipsomaly fit`: its memory bank and calibrated "
        "thresholds go into the graph; the model options default to the profile's",
    )
    p.add_argument(
        "--mode",
        choices=MODES,
        help="with --profile: how images are scored (default: fused)",
    )
    p.add_argument(
        "--format",
        choices=FORMAT_CHOICES,
        default="onnx",
        help="onnx (model.onnx, tipsomaly[onnx]) or openvino (model.xml/.bin, tipsomaly[openvino])",
    )
    p.add_argument("--out", required=True, help="the export folder to write")
    add_model_options(
        p,
        skip=("device", "dtype", "batch_size"),
        **{name: _from_profile(name) for name in PROFILE_SETTINGS},
    )
    p.add_argument(
        "--opset",
        type=positive_int,
        default=18,
        help="ONNX opset of the graph (18 or newer)",
    )
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    """Run ``export``: check options, load the model (and profile), export, report."""
    from pathlib import Path

    import torch

    from ..method.config import resolve_pixel_prompts
    from ..method.detector import Detector
    from ..method.profile import ProfileError, read_record
    from .options import check_model_options

    if args.mode is not None and not args.profile:
        raise InvalidOptionError("--mode needs --profile (without one, the export is zero-shot)")
    if args.opset < 18:
        raise InvalidOptionError(f"--opset {args.opset}: torch's exporter writes opset 18 or newer")
    profiles = [args.profile] if args.profile else None
    args.profile = profiles
    apply_profile_settings(args)
    if profiles:
        fitted = read_record(profiles[0])["class_name"]
        if args.class_name is None:
            args.class_name = fitted
        elif args.class_name != fitted:
            raise ProfileError(
                f"{profiles[0]} is a profile of {fitted!r}, not {args.class_name!r}: leave out "
                "--class-name or fit a profile of that class"
            )
    if args.class_name is None:
        raise InvalidOptionError("give --class-name (the class the export is for) or --profile")
    args.device, args.dtype = "cpu", "fp32"  # an export is traced in fp32 on the CPU
    check_model_options(args)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise OutputError(args.out, "exists and is not a folder")
    ensure_out_dir(args.out)
    _check_extras(args.format)
    detector = Detector(
        args.model,
        prompt_type=args.prompt_type,
        prompt_file=args.prompt_file,
        pixel_prompts=resolve_pixel_prompts(args.pixel_prompts, args.model),
        image_size=args.image_size,
        sigma=args.sigma,
        cls=args.cls,
        device="cpu",
        dtype=torch.float32,
        offline=args.offline or None,
        profile=profiles,
        mode=args.mode,
    )
    from ..deploy.export import export

    _report(export(detector, args.class_name, args.out, args.format, opset=args.opset))
    return ExitCode.OK


def _check_extras(fmt: str) -> None:
    """The packages the format needs, before the model loads (one line naming the extra)."""
    from ..deploy._extras import require

    for module in ("onnx", "onnxscript"):
        require(module, fmt, f"exporting to {fmt}")
    if fmt == "openvino":
        require("openvino", "openvino", "exporting to openvino")


def _report(result: Any) -> None:
    r = result.record
    graph = r["graph"]
    files = ", ".join(sorted(graph["sha256"]))
    print(
        f"exported {r['class_name']!r} ({r['mode']}, {r['image_size']} px, {r['model']['name']}) "
        f"as {graph['format']} (fp32, opset {graph['opset']}) -> {result.folder}/: {files}, "
        "export.json"
    )
    print(f"outputs: {', '.join(o['name'] for o in graph['outputs'])}")
    if result.parity is not None:
        scores = max(result.parity[n] for n in ("image_score", "score_cls1", "score_cls2"))
        print(
            f"checked against PyTorch on 2 images: max |difference| {scores:.2g} on the "
            f"scores, {result.parity['anomaly_map']:.2g} on the maps"
        )
    th = r["thresholds"]
    if th["image"] is not None:
        print(f"image threshold {th['image']['threshold']:.6f} (pred_label)", end="")
        if th["pixel"] is not None:
            print(f", pixel threshold {th['pixel']['threshold']:.6f} (pred_mask)", end="")
        print()
    print(
        f"run it: tipsomaly predict IMAGES --model {result.folder} --class-name "
        f"{_quoted(r['class_name'])}"
    )


def _quoted(text: str) -> str:
    import shlex

    return shlex.quote(text)


# -- predict --model EXPORT_DIR ----------------------------------------------------------------
def exported_model(args: argparse.Namespace) -> ExportedDetector | None:
    """``predict``'s ``--model`` when it names an export folder: the export's
    :class:`~tipsomaly.deploy.inferencers.ExportedDetector`; ``None`` for anything else.

    The options that the export fixed (image size, sigma, CLS token, prompts, profile, mode,
    class) may be left out, or must equal the export's; they are set to the export's values
    so the rest of ``predict`` (and ``scores.json``) reads them. ``--device`` must be auto or
    cpu and ``--dtype`` auto or fp32: the graph runs in fp32 on the CPU.

    Raises:
        InvalidOptionError: an option the export contradicts (named, with its value).
        ExportError: a malformed export, or a class other than the export's.
        MissingExtraError: its runtime is not installed (names the extra).
    """
    from ..deploy.metadata import ExportError, is_export_dir, read_metadata

    if not is_export_dir(args.model):
        return None
    folder = args.model
    record = read_metadata(folder)
    if args.profile:
        raise InvalidOptionError(
            f"--profile: the export {folder} holds its own profile (if any) in the graph; leave "
            "out --profile, or export again with `tipsomaly export --profile DIR`"
        )
    if args.mode is not None and args.mode != record["mode"]:
        raise InvalidOptionError(
            f"--mode {args.mode}: the export {folder} scores in mode {record['mode']}; export "
            f"again with --mode {args.mode}"
        )
    args.mode = None  # predict's own check: --mode needs --profile
    pixel = record["pixel_prompts"]
    fixed: dict[str, Any] = {
        "image_size": record["image_size"],
        "sigma": record["sigma"],
        "cls": record["cls"],
        "prompt_type": record["prompts"].get("name"),
    }
    for name, value in fixed.items():
        given = getattr(args, name, None)
        if given is not None and given != value:
            option = "--" + name.replace("_", "-")
            raise InvalidOptionError(
                f"{option} {given}: the export {folder} was made with {option} {value}; leave "
                "it out or export again with the value you want"
            )
    if args.prompt_file is not None:
        raise InvalidOptionError(
            f"--prompt-file: the export {folder} holds its text embeddings already; leave it out "
            "or export again with it"
        )
    given = args.pixel_prompts
    if given is not None and str(given).lower() != "auto":
        wanted = None if str(given).lower() == "none" else str(given)
        recorded = None if pixel is None else pixel.get("source")
        if wanted != recorded:
            raise InvalidOptionError(
                f"--pixel-prompts {given}: the export {folder} was made with "
                f"{recorded or 'none'}; leave it out or export again with the prompts you want"
            )
    if getattr(args, "class_from_folder", False):
        raise InvalidOptionError(
            f"--class-from-folder: the export {folder} is of one class, "
            f"{record['class_name']!r}; give --class-name {_quoted(record['class_name'])}"
        )
    if args.class_name is not None and args.class_name != record["class_name"]:
        raise ExportError(
            f"--class-name {args.class_name!r}: the export {folder} is of class "
            f"{record['class_name']!r} (its text embeddings are for that class only); export "
            f"again with --class-name {_quoted(args.class_name)}"
        )
    if str(args.device) not in ("auto", "cpu"):
        raise InvalidOptionError(
            f"--device {args.device}: an export runs on the CPU (ONNX Runtime / OpenVINO)"
        )
    if str(args.dtype) not in ("auto", "fp32"):
        raise InvalidOptionError(f"--dtype {args.dtype}: an export runs in fp32")
    for name, value in fixed.items():
        setattr(args, name, value)
    args.pixel_prompts = "none" if pixel is None else pixel.get("source", "given")
    args.device, args.dtype = "cpu", "fp32"
    if getattr(args, "overlay_scale", "") is None and record.get("profile") is not None:
        args.overlay_scale = "threshold"  # as predict --profile colours its overlays
    from ..deploy.inferencers import load_inferencer

    return load_inferencer(folder, batch_size=args.batch_size)
