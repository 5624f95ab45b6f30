""":class:`RecordStore`: the records database (SQLite file or PostgreSQL) behind one object.

Every write is one transaction; :meth:`RecordStore.add` returns only once its rows are
committed. SQLite: WAL mode (readers never wait for the writer), a busy timeout (writers of
other processes wait instead of failing), ``BEGIN IMMEDIATE`` for writes (no deadlock between
two readers turning writers) and, in-process, one writer at a time; ``synchronous=FULL`` when
``durable`` (a committed record survives a power cut, not only a crash), else ``NORMAL``.
PostgreSQL: a connection pool checked before use (a restarted server is reconnected to).

Any database failure (down, full, read-only, locked too long) is :class:`RecordsUnavailableError`
with a one-line message naming the database (without its password).
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import one_line
from ..validation import choice, non_empty
from . import (
    NORMAL_VERDICTS,
    VERDICTS,
    RecordNotFoundError,
    RecordsError,
    RecordsUnavailableError,
    ReviewConflictError,
    require_sqlalchemy,
)

logger = logging.getLogger(__name__)

#: seconds a SQLite writer waits for another process's write to end before failing
BUSY_TIMEOUT_S = 10.0
#: seconds to wait for a PostgreSQL server to accept a connection
CONNECT_TIMEOUT_S = 5
#: most records one query returns
MAX_PAGE = 500
#: what ``outcome`` filters on
OUTCOMES = ("anomalous", "normal")


def database_url(spec: str | os.PathLike) -> str:
    """``--db``'s value as an SQLAlchemy URL: a file path → ``sqlite:///ABS``; ``postgresql://``
    (or ``postgres://``) → psycopg 3's driver; other URLs as given.

    Raises:
        RecordsError: a path whose folder does not exist.
    """
    text = os.fspath(spec)
    if "://" not in text:
        path = Path(text).expanduser().absolute()
        if not path.parent.is_dir():
            raise RecordsError(f"--db {text}: the folder {path.parent} does not exist")
        if path.is_dir():
            raise RecordsError(f"--db {text}: is a folder; give a database file's path")
        return f"sqlite:///{path}"
    scheme, rest = text.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg://{rest}"
    return text


class RecordStore:
    """The records database at ``url`` (see the module doc), created or upgraded on open.

    Args:
        url: a SQLite file path, or an SQLAlchemy URL (``postgresql://user@host/db``).
        durable: SQLite: sync every commit to disk (``synchronous=FULL``).

    Raises:
        MissingExtraError: SQLAlchemy (or the database's driver) is not installed.
        RecordsError: a database of a newer schema, or not ours.
        RecordsUnavailableError: the database cannot be reached or written.
    """

    def __init__(self, url: str | os.PathLike, *, durable: bool = True) -> None:
        sa = require_sqlalchemy()
        from sqlalchemy import event

        self.url = database_url(url)
        try:
            parsed = sa.make_url(self.url)
        except sa.exc.ArgumentError as exc:
            raise RecordsError(f"--db {url}: not a database URL ({one_line(exc)})") from None
        given = os.fspath(url)
        #: the database as messages name it: the path given, or the URL without its password
        self.shown = (
            sa.make_url(given).render_as_string(hide_password=True) if "://" in given else given
        )
        self.dialect = parsed.get_backend_name()
        self._write_lock = threading.Lock() if self.dialect == "sqlite" else None
        if self.dialect == "postgresql":
            from ..errors import require

            require("psycopg", "records", "a PostgreSQL records database")
        kwargs: dict[str, Any] = {"pool_pre_ping": True}
        if self.dialect == "postgresql":
            kwargs["connect_args"] = {"connect_timeout": CONNECT_TIMEOUT_S}
        try:
            self.engine = sa.create_engine(self.url, **kwargs)
        except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
            raise RecordsError(f"--db {self.shown}: {one_line(exc)}") from None
        if self.dialect == "sqlite":
            sync = "FULL" if durable else "NORMAL"

            @event.listens_for(self.engine, "connect")
            def _sqlite_connect(dbapi_conn: Any, _record: Any) -> None:
                dbapi_conn.isolation_level = None  # transactions as we begin them (below)
                cursor = dbapi_conn.cursor()
                cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute(f"PRAGMA synchronous = {sync}")
                cursor.execute("PRAGMA foreign_keys = ON")
                cursor.close()

            @event.listens_for(self.engine, "begin")
            def _sqlite_begin(conn: Any) -> None:
                write = conn.get_execution_options().get("write", False)
                conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")

        from .migrations import upgrade

        with self._write() as conn:
            self.found_version, self.version = upgrade(conn, self.shown)

    # -- plumbing ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        from sqlalchemy.exc import DBAPIError, OperationalError

        try:
            yield
        except (OperationalError, DBAPIError) as exc:
            reason = one_line(exc.orig if exc.orig is not None else exc, 160)
            raise RecordsUnavailableError(f"records database {self.shown}: {reason}") from None

    @contextlib.contextmanager
    def _write(self) -> Iterator[Any]:
        """A write transaction (committed when the block ends without error)."""
        lock = self._write_lock or contextlib.nullcontext()
        with self._errors(), lock, self.engine.connect() as conn:
            conn = conn.execution_options(write=True)
            with conn.begin():
                yield conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        with self._errors(), self.engine.connect() as conn, conn.begin():
            yield conn

    def close(self) -> None:
        self.engine.dispose()

    # -- records -------------------------------------------------------------------------------
    def add(self, rows: Sequence[Mapping[str, Any]]) -> list[int]:
        """Insert records (one transaction; all or none); their ids, in order, once committed.

        Each row holds :data:`~.schema.RECORD_FIELDS` entries (``time`` defaults to now).

        Raises:
            RecordsUnavailableError: nothing was stored (the message says why).
        """
        from sqlalchemy import insert

        from .schema import RECORD_FIELDS, records

        if not rows:
            return []
        now = time.time()
        values = []
        for row in rows:
            unknown = set(row) - set(RECORD_FIELDS)
            if unknown:
                raise ValueError(f"unknown record fields: {', '.join(sorted(unknown))}")
            values.append({"time": now, "image_kept": False, **row})
        with self._write() as conn:
            result = conn.execute(
                insert(records).returning(records.c.id, sort_by_parameter_order=True), values
            )
            return [int(i) for i in result.scalars()]

    def get(self, record_id: int) -> dict[str, Any]:
        """The record (:meth:`as_dict`), with its ``reviews`` (oldest first).

        Raises:
            RecordNotFoundError: no record of that id.
        """
        from sqlalchemy import select

        from .schema import records, reviews

        with self._read() as conn:
            row = conn.execute(select(records).where(records.c.id == record_id)).first()
            if row is None:
                raise RecordNotFoundError(f"no record {record_id} in {self.shown}")
            history = conn.execute(
                select(reviews.c.time, reviews.c.verdict, reviews.c.reviewer)
                .where(reviews.c.record_id == record_id)
                .order_by(reviews.c.id)
            ).all()
        out = as_dict(row)
        out["reviews"] = [
            {"time": iso(r.time), "verdict": r.verdict, "reviewer": r.reviewer} for r in history
        ]
        return out

    def query(
        self,
        *,
        outcome: str | None = None,
        unreviewed: bool = False,
        class_name: str | None = None,
        station: str | None = None,
        since: float | None = None,
        until: float | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[dict[str, Any]]:
        """The newest records first, filtered: ``outcome`` anomalous / normal (the decision),
        ``unreviewed``, ``class_name``, ``station``, ``since`` ≤ time < ``until`` (epoch s);
        ``before_id`` pages on (the last id of the previous page); at most ``limit``
        (≤ :data:`MAX_PAGE`)."""
        from sqlalchemy import select

        from .schema import records as r

        conditions = []
        if outcome is not None:
            choice(outcome, "outcome", OUTCOMES)
            conditions.append(r.c.is_anomalous.is_(outcome == "anomalous"))
        if unreviewed:
            conditions.append(r.c.verdict.is_(None))
        if class_name is not None:
            conditions.append(r.c.class_name == class_name)
        if station is not None:
            conditions.append(r.c.station == station)
        if since is not None:
            conditions.append(r.c.time >= since)
        if until is not None:
            conditions.append(r.c.time < until)
        if before_id is not None:
            conditions.append(r.c.id < before_id)
        n = max(1, min(int(limit), MAX_PAGE))
        stmt = select(r).where(*conditions).order_by(r.c.id.desc()).limit(n)
        with self._read() as conn:
            return [as_dict(row) for row in conn.execute(stmt)]

    def all_ids(self) -> list[int]:
        """Every record's id, ascending (for checks and exports)."""
        from sqlalchemy import select

        from .schema import records

        with self._read() as conn:
            return [
                int(i) for i in conn.execute(select(records.c.id).order_by(records.c.id)).scalars()
            ]

    # -- reviews -------------------------------------------------------------------------------
    def review(
        self, record_id: int, verdict: str, reviewer: str, class_name: str | None = None
    ) -> dict[str, Any]:
        """Store a person's verdict on a record (the latest replaces the shown one; every one
        stays in ``reviews``); the record afterwards.

        Raises:
            InvalidOptionError: an unknown verdict or an empty reviewer name.
            RecordNotFoundError: no record of that id.
            ReviewConflictError: ``class_name`` is not the record's, the record has no decision,
                or the verdict is for the other decision (false_alarm of a passed image).
        """
        from sqlalchemy import select

        from .schema import records, reviews

        choice(verdict, "verdict", VERDICTS)
        reviewer = non_empty(reviewer, "reviewer").strip()
        now = time.time()
        with self._write() as conn:
            row = conn.execute(
                select(records.c.class_name, records.c.is_anomalous).where(
                    records.c.id == record_id
                )
            ).first()
            if row is None:
                raise RecordNotFoundError(f"no record {record_id} in {self.shown}")
            if class_name is not None and class_name != row.class_name:
                raise ReviewConflictError(
                    f"record {record_id} is of class {row.class_name!r}, not {class_name!r}"
                )
            if row.is_anomalous is None:
                raise ReviewConflictError(
                    f"record {record_id} has no decision (no threshold, or no score): nothing "
                    "to confirm or correct"
                )
            flagged_verdicts = VERDICTS[:2]
            if (verdict in flagged_verdicts) != bool(row.is_anomalous):
                allowed = flagged_verdicts if row.is_anomalous else VERDICTS[2:]
                raise ReviewConflictError(
                    f"record {record_id} was {'flagged' if row.is_anomalous else 'passed'}: "
                    f"its verdict is one of {', '.join(allowed)}, not {verdict}"
                )
            conn.execute(
                reviews.insert().values(
                    record_id=record_id, time=now, verdict=verdict, reviewer=reviewer
                )
            )
            conn.execute(
                records.update()
                .where(records.c.id == record_id)
                .values(verdict=verdict, reviewer=reviewer, reviewed_at=now)
            )
        return self.get(record_id)

    def reviewed_normal(
        self, class_name: str, *, since: float | None = None, kept_only: bool = True
    ) -> list[dict[str, Any]]:
        """Records of ``class_name`` whose latest verdict says normal (false_alarm,
        confirmed_normal), reviewed at or after ``since``; oldest first; with ``kept_only``
        only those whose image was kept (``--keep-images``)."""
        from sqlalchemy import select

        from .schema import records as r

        conditions = [r.c.class_name == class_name, r.c.verdict.in_(NORMAL_VERDICTS)]
        if since is not None:
            conditions.append(r.c.reviewed_at >= since)
        if kept_only:
            conditions.append(r.c.image_kept.is_(True))
        with self._read() as conn:
            return [
                as_dict(row) for row in conn.execute(select(r).where(*conditions).order_by(r.c.id))
            ]

    def monitor_inputs(
        self, class_name: str, *, profile_id: str | None, mode: str, recent: int = 200
    ) -> tuple[list[float], int, int]:
        """What the drift check of a class needs, among its records decided by ``profile_id``
        in ``mode``: the latest ``recent`` image scores (oldest first; records reviewed as
        defects left out), the number reviewed as normal and how many of those were flagged."""
        from sqlalchemy import func, select

        from .schema import records as r

        mine = [r.c.class_name == class_name, r.c.mode == mode, r.c.image_score.is_not(None)]
        mine.append(
            r.c.profile_id.is_(None) if profile_id is None else r.c.profile_id == profile_id
        )
        not_defect = r.c.verdict.is_(None) | r.c.verdict.in_(NORMAL_VERDICTS)
        scores = (
            select(r.c.image_score).where(*mine, not_defect).order_by(r.c.id.desc()).limit(recent)
        )
        counts = select(func.count(), func.count().filter(r.c.is_anomalous.is_(True))).where(
            *mine, r.c.verdict.in_(NORMAL_VERDICTS)
        )
        with self._read() as conn:
            recent_scores = [float(s) for s in conn.execute(scores).scalars()][::-1]
            reviewed, flagged = conn.execute(counts).one()
        return recent_scores, int(reviewed), int(flagged)

    def integrity_check(self) -> str:
        """SQLite's ``PRAGMA integrity_check`` (``"ok"`` when sound); ``"ok"`` elsewhere."""
        if self.dialect != "sqlite":
            return "ok"
        with self._read() as conn:
            return "; ".join(str(r[0]) for r in conn.exec_driver_sql("PRAGMA integrity_check"))


#: the entries of an answer (``Prediction.to_dict()`` or serve's result) a record copies
DECISION_FIELDS = (
    "class_name", "mode", "image_score", "score_cls1", "score_cls2", "threshold",
    "threshold_source", "pixel_threshold", "is_anomalous", "defects", "roi", "error",
)  # fmt: skip


def decision_record(answer: Mapping[str, Any], **fields: Any) -> dict[str, Any]:
    """A record of one answer: its :data:`DECISION_FIELDS` (missing ones None), then
    ``fields`` (source, station, image_sha256, profile_id, identity, ...)."""
    return {**{k: answer.get(k) for k in DECISION_FIELDS}, **fields}


def iso(t: float | None) -> str | None:
    """Epoch seconds → ISO 8601 UTC with milliseconds (None stays None)."""
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat(
        timespec="milliseconds"
    )


def as_dict(row: Any) -> dict[str, Any]:
    """A ``records`` row as JSON: its columns, ``time`` and ``reviewed_at`` in ISO 8601 UTC
    (``epoch`` keeps the number)."""
    out = dict(row._mapping)
    out["epoch"] = out["time"]
    out["time"] = iso(out["time"])
    out["reviewed_at"] = iso(out.get("reviewed_at"))
    return out


__all__ = [
    "DECISION_FIELDS",
    "MAX_PAGE",
    "OUTCOMES",
    "RecordStore",
    "as_dict",
    "database_url",
    "decision_record",
    "iso",
]
