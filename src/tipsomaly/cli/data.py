"""``tipsomaly data meta``: write ``meta.json`` for a dataset in a layout people download."""

from __future__ import annotations

import argparse
import sys

from ..data.layouts import LAYOUT_NAMES  # the registry's names (importing it loads no torch)
from .exit_codes import ExitCode
from .options import HelpFormatter, writing


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser("data", help="prepare datasets", formatter_class=HelpFormatter)
    verbs = parser.add_subparsers(dest="data_verb", metavar="ACTION", required=True)
    p = verbs.add_parser(
        "meta",
        parents=[common],
        help="write ROOT/meta.json from a native layout",
        description="Scan a dataset in its native layout and write ROOT/meta.json "
        "(the AnomalyCLIP/AdaCLIP convention that eval and train read).",
        formatter_class=HelpFormatter,
    )
    p.add_argument("root", help="dataset root (meta.json is written there)")
    p.add_argument(
        "--layout",
        metavar="LAYOUT",
        help=f"native layout: {', '.join(LAYOUT_NAMES)} (default: detected)",
    )
    p.add_argument("--classes", nargs="+", help="only these classes (default: all)")
    p.add_argument("--force", action="store_true", help="overwrite an existing meta.json")
    p.set_defaults(func=run_meta)


def run_meta(args: argparse.Namespace) -> int:
    """Run ``data meta``: detect or take the layout, write ``ROOT/meta.json``, print counts."""
    from pathlib import Path

    from ..data.layouts import build_meta, detect_layout
    from ..data.meta import meta_path_for, read_meta, write_meta

    root = Path(args.root)
    target = meta_path_for(root)
    if target.exists() and not args.force:
        print(f"tipsomaly: error: {target} exists; use --force to overwrite", file=sys.stderr)
        return ExitCode.ERROR
    # LayoutError / MetaError reach main(), which prints them as one-line user errors.
    layout = args.layout or detect_layout(root)
    meta = build_meta(root, layout, classes=args.classes)
    with writing(target):
        write_meta(root, meta)
    summary = read_meta(root, "test")
    for cls, (normal, anomalous) in summary.counts().items():
        print(f"{cls}: {normal} normal, {anomalous} anomalous")
    print(f"written: {target} (layout {layout})")
    return ExitCode.OK
