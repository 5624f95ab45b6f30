"""``tipsomaly weights list|download|path``: the named checkpoints and the local cache."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..tips.presets import PRESETS, TOKENIZER_FILE, Preset, get_preset
from ..tips.weights import weights_dir
from .options import HelpFormatter


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "weights", help="list, download and locate TIPS checkpoints", formatter_class=HelpFormatter
    )
    verbs = parser.add_subparsers(dest="weights_verb", metavar="ACTION", required=True)

    def verb(name: str, text: str, func: object) -> argparse.ArgumentParser:
        p = verbs.add_parser(name, parents=[common], help=text, formatter_class=HelpFormatter)
        p.set_defaults(func=func)
        return p

    p = verb("list", "every preset, its size, cached or not", cmd_list)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p = verb("download", "download a preset into the cache", cmd_download)
    p.add_argument("name", nargs="+", help="preset name(s), e.g. l14h")
    p.add_argument(
        "--source",
        choices=["auto", "gcs", "hub"],
        default="auto",
        help="gcs: Google's bucket (.npz, every preset); hub: the Hugging Face hub (TIPSv2); "
        "auto: the hub's cache if it already holds the preset, else the bucket",
    )
    verb("path", "where a preset's files are kept", cmd_path).add_argument(
        "name", help="preset name, e.g. l14h"
    )


def _files(preset: Preset) -> list[tuple[str, str]]:
    """(local path, URL) of each file of a preset in our cache."""
    root = weights_dir()
    return [
        (str(root / preset.vision_file), preset.vision_url),
        (str(root / preset.text_file), preset.text_url),
        (str(root / TOKENIZER_FILE), preset.tokenizer_url),
    ]


def _cached(preset: Preset) -> str:
    """``yes`` (all files), ``partial`` (some of its own files or a cut download) or ``no``."""
    files = [Path(path) for path, _ in _files(preset)]
    if all(f.is_file() for f in files):
        return "yes"
    own = files[:2]  # the tokenizer is shared by every preset: it does not make one partial
    started = [f.is_file() or f.with_name(f.name + ".part").exists() for f in own]
    return "partial" if any(started) else "no"


def cmd_list(args: argparse.Namespace) -> int:
    """``weights list``: a table (or ``--json``) of every preset and whether it is cached."""
    rows = []
    for p in PRESETS.values():
        rows.append(
            {
                "short": p.short_name,
                "name": p.name,
                "version": p.version,
                "dim": p.embed_dim,
                "image": p.image_size,
                "grid": p.grid_size,
                "params_m": round(p.params_vision_m + p.params_text_m, 1),
                "download_mb": round(p.download_mb),
                "temperature": p.temperature,
                "hub": p.hub_repo or "",
                "cached": _cached(p),
                "description": p.description,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = ["short", "name", "dim", "image", "grid", "params_m", "download_mb", "cached", "hub"]
    table = [header] + [[str(r[h]) for h in header] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    print(f"\ncache: {weights_dir()}  (set TIPSOMALY_HOME to move it)")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    """``weights download``: fetch each named preset into the cache; prints the paths."""
    from ..tips.model import preset_files

    for name in args.name:
        preset = get_preset(name)
        files = preset_files(
            preset, source=args.source, offline=args.offline or None, progress=not args.quiet
        )
        for path in (files.vision, files.text, files.combined, files.tokenizer):
            if path is not None:
                print(path)
    return 0


def cmd_path(args: argparse.Namespace) -> int:
    """``weights path``: each file of a preset in the cache, with its URL."""
    preset = get_preset(args.name)
    for path, url in _files(preset):
        print(f"{path}\t{url}")
    return 0
