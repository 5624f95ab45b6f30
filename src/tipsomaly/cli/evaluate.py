"""``tipsomaly eval``: the paper's Table 1 for one or several datasets with a ``meta.json``."""

from __future__ import annotations

import argparse

from .options import (
    HelpFormatter,
    add_input_options,
    add_model_options,
    apply_input_options,
    check_model_options,
    dtype_name,
    ensure_out_dir,
    non_negative_float,
    non_negative_int,
    positive_int,
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
        "--sigma or --cls reuses the stored predictions without running the network.",
        epilog="exit status: 0 done, 3 some images could not be read (listed), 1 an option, "
        "model, dataset or output error. Every option is checked before the model loads.",
        formatter_class=HelpFormatter,
    )
    p.add_argument(
        "--data", nargs="+", required=True, metavar="DIR", help="dataset root(s) with meta.json"
    )
    add_model_options(p)
    add_input_options(p)
    p.add_argument(
        "--allow-outside-root",
        action="store_true",
        help="let meta.json paths leave the dataset root (../, absolute paths, symlinks out); "
        "by default such entries are refused",
    )
    p.add_argument(
        "--pixel-prompts",
        default="auto",
        help="learned pixel prompts: a bundled name (trained-on-mvtec, trained-on-visa), a "
        ".safetensors/.pth file, 'none', or 'auto' (default: the paper's protocol for l14h — "
        "prompts trained on VisA for MVTec AD, on MVTec AD for every other dataset; none for "
        "other backbones)",
    )
    p.add_argument("--classes", nargs="+", help="only these classes (default: all)")
    p.add_argument(
        "--sigma", type=non_negative_float, default=4.0, help="map smoothing, model-input px"
    )
    p.add_argument(
        "--cls",
        choices=["cls1", "cls2"],
        default="cls1",
        help="CLS token of the image metrics in the printed table (both are in the files)",
    )
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass")
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=1,
        help="image-loading worker processes (0: load in the main process)",
    )
    p.add_argument(
        "--aupro",
        choices=["zsad", "mvtec"],
        default="zsad",
        help="zsad: the convention of the paper's tables (200 thresholds, FPR<0.3 rescaled); "
        "mvtec: the official MVTec AD definition (exact curve to FPR 0.3, divided by 0.3)",
    )
    p.add_argument("--out", default="tipsomaly-eval", help="output directory")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``eval``: check options, evaluate every dataset, write and print the results."""
    from ..report.results import render_text, write_results
    from ..runners.evaluate import EvalSettings, environment, evaluate_datasets
    from ..runners.lock import OutputLock

    device, dtype = check_model_options(args)  # before any model loads
    ensure_out_dir(args.out)
    apply_input_options(args)
    pixel_prompts = None if args.pixel_prompts == "none" else args.pixel_prompts
    settings = EvalSettings(
        model=args.model,
        pixel_prompts=pixel_prompts,
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
    )
    # one lock over the predictions and the result files: no other run writes between them
    with OutputLock(args.out):
        results = evaluate_datasets(
            args.data, settings, args.out, progress=not args.quiet, lock=False
        )
        config = {
            "settings": vars(settings) | {"classes": args.classes, "max_pixels": args.max_pixels},
            "environment": environment(),
        }
        config["settings"]["data"] = list(args.data)
        with writing(args.out):
            files = write_results(results, args.out, config, args.cls)
    print(render_text(results, args.cls))
    print("written: " + ", ".join(str(f) for f in files))
    failed = sum(len(r.errors) for r in results)
    return 3 if failed else 0
