"""``tipsomaly profile update|history|rollback PROFILE``: a profile's versions and feedback."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .exit_codes import ExitCode
from .options import HelpFormatter, add_config_option, given_settings, writing

_EPILOG = """\
what it does:
  update    adds normal images (e.g. false alarms a person reviewed as normal) to the
            profile's references: a new version whose bank holds old and new references
            (a greedy k-centre coreset above the profile's bank limit) and whose thresholds
            are recalibrated by the same leave-one-out conformal rule over all of them,
            exactly as `fit` on all the images would. The images are refused (nothing
            written) when one cannot be read, breaks the pixel limit, or is a duplicate (same
            SHA-256) of a reference or of another new image.
  history   lists the versions: number, time, digest (the version's id), parent digest,
            references, image thresholds per mode.
  rollback  makes an older version current again (default: the one before the current), as
            a new version with its bank and thresholds: the same decisions as then.
files (in PROFILE):
  profile.json      the current version (replaced in one step: a service reloading the
                    folder reads the old version or the new one, never half)
  versions/N/       every version's profile.json and bank.safetensors
  references/       a copy of each reference image, by SHA-256 (an update scores them again)
exit status: 0 done, 2 no image found to add, 1 errors (unreadable or duplicate image, no such
version, profile of a newer format, options), 130 interrupted."""


def add_parser(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    from ..method.config import DetectorConfig

    p = sub.add_parser(
        "profile",
        parents=[common],
        help="a profile's versions: add normal images (feedback), list the history, roll back",
        description="Versions of a profile folder: update with reviewed normal images, history, "
        "rollback.",
        epilog=_EPILOG,
        formatter_class=HelpFormatter,
    )
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    update = actions.add_parser(
        "update",
        parents=[common],
        help="add normal images: a new version with recalibrated thresholds",
        formatter_class=HelpFormatter,
    )
    update.add_argument("profile", metavar="PROFILE", help="the profile folder")
    # the images' sources: --add-normal (files); a records database may add its own option
    sources = update.add_argument_group("images to add (at least one source)")
    sources.add_argument(
        "--add-normal",
        nargs="+",
        default=[],
        metavar="IMAGE",
        help="normal images: files, folders (searched recursively) or glob patterns",
    )
    sources.add_argument(
        "--from-db",
        metavar="URL",
        help="the images reviewed as normal (false_alarm, confirmed_normal) in this records "
        "database (serve --db) since the profile's current version; needs --keep-images",
    )
    sources.add_argument(
        "--keep-images",
        metavar="DIR",
        help="with --from-db: the folder the server kept the images in (serve --keep-images)",
    )
    note = "the profile's when it recorded one"
    for name in ("device", "dtype", "batch_size"):
        add_config_option(update, DetectorConfig, name, note=note if name == "dtype" else "")
    update.set_defaults(func=cmd_update)

    hist = actions.add_parser(
        "history", parents=[common], help="list the versions", formatter_class=HelpFormatter
    )
    hist.add_argument("profile", metavar="PROFILE", help="the profile folder")
    hist.set_defaults(func=cmd_history)

    back = actions.add_parser(
        "rollback",
        parents=[common],
        help="make an older version current again (as a new version)",
        formatter_class=HelpFormatter,
    )
    back.add_argument("profile", metavar="PROFILE", help="the profile folder")
    back.add_argument(
        "--to", type=int, metavar="N", help="the version to restore (default: the previous one)"
    )
    back.set_defaults(func=cmd_rollback)


def image_sources(args: argparse.Namespace) -> list[str]:
    """The images ``update`` adds, from every source option given."""
    from ..errors import InvalidOptionError

    images = list(args.add_normal)
    if args.from_db is not None:
        if args.keep_images is None:
            raise InvalidOptionError("--from-db needs --keep-images DIR (where the images are)")
        from ..runners.feedback import reviewed_normal_images

        images += [
            str(p) for p in reviewed_normal_images(args.from_db, args.keep_images, args.profile)
        ]
    elif args.keep_images is not None:
        raise InvalidOptionError("--keep-images is for --from-db")
    if not images:
        raise InvalidOptionError(
            "profile update needs images to add: --add-normal IMAGE... or --from-db URL"
        )
    return images


def cmd_update(args: argparse.Namespace) -> int:
    from ..runners.profiles import run_profile_update

    images = image_sources(args)
    given = {k: v for k, v in given_settings(args).items() if k in ("device", "dtype", "offline")}
    try:
        with writing(args.profile):  # a read-only folder, a full disk: one line
            change = run_profile_update(
                args.profile,
                images,
                given=given,
                batch_size=args.batch_size,
                progress=not args.quiet,
            )
    except KeyboardInterrupt:
        print("tipsomaly: interrupted; the profile is unchanged", file=sys.stderr)
        return ExitCode.INTERRUPTED
    _report(change, f"added {len(change.added)} normal image(s)")
    return ExitCode.OK


def cmd_rollback(args: argparse.Namespace) -> int:
    from ..runners.profiles import run_profile_rollback

    with writing(args.profile):
        change = run_profile_rollback(args.profile, args.to)
    restored = change.profile.info.get("restored_from")
    _report(change, f"restored version {restored}")
    return ExitCode.OK


def cmd_history(args: argparse.Namespace) -> int:
    from ..method.names import MODES
    from ..runners.profiles import profile_history

    entries = profile_history(args.profile)
    header = f"  {'version':>7}  {'created':<25} {'digest':<32}  {'parent':<32}  {'refs':>4}  "
    print(header + "  ".join(f"{m:>10}" for m in MODES))
    for e in entries:
        mark = "*" if e.current else " "
        note = f"  (restores {e.restored_from})" if e.restored_from else ""
        print(
            f"{mark} {e.version:>7}  {e.created or '-':<25} {e.digest:<32}  "
            f"{e.parent or '-':<32}  {e.references:>4}  "
            + "  ".join(_threshold(e.thresholds.get(m)) for m in MODES)
            + note
        )
    print("* current; thresholds: image thresholds per mode")
    return ExitCode.OK


def _threshold(value: Any) -> str:
    return f"{'-':>10}" if value is None else f"{value:>10.6f}"


def _report(change: Any, what: str) -> None:
    p = change.profile
    print(
        f"{change.folder}: version {p.version} ({what}; parent: version "
        f"{change.previous_version}, {p.parent}), {p.info['references']['used']} references, "
        f"digest {change.digest}"
    )
    for mode, calib in ((m, p.thresholds.get(m, "image")) for m in p.thresholds.by_mode):
        if calib is not None:
            print(f"  {mode:9s}  image threshold {calib.threshold:.6f}  ({calib.note})")
