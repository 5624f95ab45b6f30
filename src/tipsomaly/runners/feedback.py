"""``profile update --from-db``: the images a records database holds as reviewed normal, for a
profile's next version.

The records of the profile's class whose latest verdict says normal (``false_alarm`` or
``confirmed_normal``), reviewed since the profile's current version was made, whose image was
kept (``serve --keep-images DIR``): each image once (by SHA-256), those already among the
profile's references left out (an update refuses duplicates), oldest review first.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path

from ..data.inputs import NoInputsError
from ..errors import InvalidOptionError, TipsomalyError
from ..method.profile import ProfileError, read_record
from ..records.images import ImageStore
from ..records.store import RecordStore

logger = logging.getLogger(__name__)


class NothingReviewedError(NoInputsError):
    """No new image reviewed as normal (the CLI's "no inputs" exit status, 2)."""

    def __init__(self, message: str) -> None:
        TipsomalyError.__init__(self, message)


def _created(record: dict) -> float | None:
    text = record.get("created")
    if not isinstance(text, str):
        return None
    try:
        t = datetime.datetime.fromisoformat(text)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return t.timestamp()


def reviewed_normal_images(
    db: str | os.PathLike, keep_images: str | os.PathLike, profile: str | os.PathLike
) -> list[Path]:
    """The kept images to add to ``profile`` (see the module doc).

    Raises:
        NothingReviewedError: there is none.
        RecordsError, RecordsUnavailableError: the database cannot be read.
        ProfileError: a record names an image that is not in ``keep_images`` (the wrong
            folder?); nothing is added then.
    """
    record = read_record(profile)
    class_name = record["class_name"]
    since = _created(record)
    known = set(record.get("references", {}).get("sha256") or [])
    if not Path(keep_images).is_dir():
        raise InvalidOptionError(f"--keep-images {keep_images}: no such folder")
    images = ImageStore(keep_images)
    store = RecordStore(db)
    try:
        rows = store.reviewed_normal(class_name, since=since)
    finally:
        store.close()
    out: list[Path] = []
    for row in rows:
        sha = row["image_sha256"]
        if sha in known:
            continue
        known.add(sha)
        path = images.path(sha)
        if not path.is_file():
            raise ProfileError(
                f"record {row['id']}: its image {sha[:12]}... is not in {keep_images} (give "
                "the folder the server kept its images in: serve --keep-images DIR)"
            )
        out.append(path)
    if not out:
        raise NothingReviewedError(
            f"{store.shown}: no new image of {class_name!r} reviewed as normal (false_alarm, "
            f"confirmed_normal) with its image kept, since version {record.get('version', 1)} "
            "of the profile"
        )
    logger.info(
        "%d image(s) of %r reviewed as normal since version %s (%d record(s) in all)",
        len(out), class_name, record.get("version", 1), len(rows),
    )  # fmt: skip
    return out


__all__ = ["NothingReviewedError", "reviewed_normal_images"]
