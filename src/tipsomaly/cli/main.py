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
from . import export as export_cli
from . import fit as fit_cli
from . import predict as predict_cli
from . import profile as profile_cli
from . import serve as serve_cli
from . import train as train_cli
from . import weights as weights_cli
from .exit_codes import ExitCode
from .options import HelpFormatter, Parser

#: The parent of every module logger (``logging.getLogger(__name__)``): its level is ours.
PACKAGE_LOGGER = "tipsomaly"

# Every verb module exposes add_parser(subparsers, common) and sets args.func.
VERBS = [
    predict_cli,
    fit_cli,
    profile_cli,
    export_cli,
    serve_cli,
    eval_cli,
    train_cli,
    data_cli,
    weights_cli,
]


# Third-party loggers quiet unless -vv; PIL's plugin chatter (a line per PNG chunk) never shown.
THIRD_PARTY = ("urllib3", "huggingface_hub", "filelock", "fsspec", "matplotlib")
ALWAYS_QUIET = ("PIL",)


def build_parser() -> argparse.ArgumentParser:
    """The ``tipsomaly`` parser with every verb (importing no torch)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="-v: tipsomaly's debug messages; -vv: also those of the libraries it uses",
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
    parser = Parser(
        prog="tipsomaly",
        formatter_class=HelpFormatter,
        description="Zero-shot visual anomaly detection (TipsOmaly) on the TIPS backbone.",
    )
    parser.add_argument("--version", action="version", version=f"tipsomaly {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for verb in VERBS:
        verb.add_parser(sub, common)
    return parser


def _setup_logging(args: argparse.Namespace) -> None:
    """Levels: default INFO for tipsomaly, WARNING for libraries; ``-q`` WARNING for all;
    ``-v`` DEBUG for tipsomaly's loggers only; ``-vv`` DEBUG for the libraries too, except
    PIL, whose plugins log every chunk they parse (kept at INFO)."""
    verbose = 0 if args.quiet else args.verbose
    ours = logging.WARNING if args.quiet else logging.DEBUG if verbose >= 1 else logging.INFO
    root = logging.DEBUG if verbose >= 2 else logging.WARNING
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(root)
    logging.getLogger(PACKAGE_LOGGER).setLevel(ours)
    for name in THIRD_PARTY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    for name in ALWAYS_QUIET:
        logging.getLogger(name).setLevel(logging.INFO if verbose >= 2 else logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv``; returns the exit status (see the README).

    0 done, 3 some images failed, 2 no input images, 1 an error the user can fix (one line,
    no traceback; usage errors too), 130 interrupted. Anything else is a bug and keeps its
    traceback.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _setup_logging(args)
    try:
        return int(args.func(args) or 0)
    except TipsomalyError as exc:
        from ..data.inputs import NoInputsError

        print(f"tipsomaly: error: {exc}", file=sys.stderr)
        return ExitCode.NO_INPUTS if isinstance(exc, NoInputsError) else ExitCode.ERROR
    except KeyboardInterrupt:
        print("tipsomaly: interrupted", file=sys.stderr)
        return ExitCode.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
