"""Inspection records: one row per decision in a real database, and the reviews of people.

A bottom-layer package (errors, files, validation only): ``tipsomaly predict --db`` (runners)
and ``tipsomaly serve --db`` (serve) write through it, ``tipsomaly profile update --from-db``
reads from it. SQLAlchemy 2 Core over SQLite (a file path; WAL mode, a busy timeout) or
PostgreSQL (a ``postgresql://`` URL, psycopg 3): the optional extra ``tipsomaly[records]``.

- :mod:`.schema`: the tables and the schema version;
- :mod:`.migrations`: an older database upgraded in place, a newer one refused;
- :mod:`.store`: :class:`~.store.RecordStore` (add, get, query, review, counts);
- :mod:`.images`: :class:`~.images.ImageStore`, images kept by SHA-256 (``--keep-images``).
"""

from __future__ import annotations

from ..errors import TipsomalyError, require


class RecordsError(TipsomalyError, ValueError):
    """A records database that cannot be used as asked (the message names it and why)."""


class RecordsUnavailableError(RecordsError, RuntimeError):
    """The database cannot take or give records now: down, full, read-only, locked."""


class RecordNotFoundError(RecordsError, KeyError):
    """No record of that id."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ReviewConflictError(RecordsError):
    """A review that does not fit its record (another class, a verdict for the other
    decision)."""


#: review verdicts; the first two are for a flagged record, the last two for a passed one
VERDICTS = ("confirmed_defect", "false_alarm", "missed_defect", "confirmed_normal")
#: the verdicts that say the image is normal
NORMAL_VERDICTS = ("false_alarm", "confirmed_normal")


def require_sqlalchemy():  # -> ModuleType
    """``import sqlalchemy``, or the one-line error naming ``tipsomaly[records]``."""
    return require("sqlalchemy", "records", "a records database (--db)")


__all__ = [
    "NORMAL_VERDICTS",
    "VERDICTS",
    "RecordNotFoundError",
    "RecordsError",
    "RecordsUnavailableError",
    "ReviewConflictError",
    "require_sqlalchemy",
]
