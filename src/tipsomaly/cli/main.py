"""The ``tipsomaly`` command: parses arguments, dispatches to a verb, turns errors into messages."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from .. import __version__
from ..errors import TipsomalyError
from . import data as data_cli
from . import evaluate as eval_cli
from . import predict as predict_cli
from . import train as train_cli
from . import weights as weights_cli

log = logging.getLogger("tipsomaly")

# Every verb module exposes add_parser(subparsers, common) and sets args.func.
VERBS = [predict_cli, eval_cli, train_cli, data_cli, weights_cli]


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v", "--verbose", action="count", default=0, help="more log output (-vv for debug)"
    )
    common.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors, no progress bars"
    )
    common.add_argument(
        "--offline",
        action="store_true",
        help="never download; fail with the URL and path to place a missing file "
        "(also: TIPSOMALY_OFFLINE=1)",
    )
    parser = argparse.ArgumentParser(
        prog="tipsomaly",
        description="Zero-shot visual anomaly detection (TipsOmaly) on the TIPS backbone.",
    )
    parser.add_argument("--version", action="version", version=f"tipsomaly {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        verb.add_parser(sub, common)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose >= 2 else logging.INFO
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.verbose < 2:  # keep third-party chatter out of normal output
        for name in ("urllib3", "huggingface_hub", "filelock", "PIL"):
            logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return int(args.func(args) or 0)
    except TipsomalyError as exc:
        print(f"tipsomaly: error: {exc}", file=sys.stderr)
        return 1
    except KeyError as exc:  # unknown preset names and the like carry their message
        print(f"tipsomaly: error: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("tipsomaly: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
