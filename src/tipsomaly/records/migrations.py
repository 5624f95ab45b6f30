"""Bring a records database to :data:`~.schema.SCHEMA_VERSION`: create it when empty, upgrade an
older one in place (each step in the same transaction as the version it writes, so a failed
upgrade leaves the database as it was), refuse a newer one in one line.

Several replicas may open one PostgreSQL database at once: the upgrade holds a transaction-level
advisory lock there, and ``BEGIN IMMEDIATE`` on SQLite (the store's write transactions), so
exactly one of them creates or upgrades and the others then see the new version.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from sqlalchemy import Connection, inspect, select, text

from . import RecordsError
from .schema import SCHEMA_VERSION, metadata, records, reviews, schema_version

logger = logging.getLogger(__name__)

#: the key of PostgreSQL's advisory lock taken while a database is created or upgraded
ADVISORY_LOCK = 0x7495_0A11


def _v1_to_v2(conn: Connection) -> None:
    """Version 2 adds reviews: the ``reviews`` table, and the latest review on each record."""
    for name, sql_type in (("verdict", "VARCHAR(20)"), ("reviewer", "VARCHAR(200)")):
        conn.exec_driver_sql(f"ALTER TABLE records ADD COLUMN {name} {sql_type}")
    conn.exec_driver_sql("ALTER TABLE records ADD COLUMN reviewed_at FLOAT")
    reviews.create(conn)
    next(i for i in records.indexes if i.name == "ix_records_verdict").create(conn)


#: step ``v`` upgrades a database at version ``v`` to ``v + 1``
STEPS: dict[int, Callable[[Connection], None]] = {1: _v1_to_v2}


def upgrade(conn: Connection, shown: str) -> tuple[int, int]:
    """Create or upgrade the tables inside ``conn``'s transaction; ``(version found, version
    now)`` (found 0: a new database).

    Raises:
        RecordsError: a database of a newer schema, or one with a ``records`` table that is not
            ours.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": ADVISORY_LOCK})
    tables = set(inspect(conn).get_table_names())
    if "schema_version" not in tables:
        if "records" in tables:
            raise RecordsError(
                f"{shown}: has a 'records' table but no schema_version: not a tipsomaly "
                "records database (give another --db)"
            )
        metadata.create_all(conn)
        conn.execute(
            schema_version.insert().values(id=1, version=SCHEMA_VERSION, updated_at=time.time())
        )
        logger.info("records database %s created (schema version %d)", shown, SCHEMA_VERSION)
        return 0, SCHEMA_VERSION
    found = conn.execute(select(schema_version.c.version)).scalar_one_or_none()
    if found is None:
        raise RecordsError(f"{shown}: the schema_version table is empty: not a usable database")
    if found > SCHEMA_VERSION:
        raise RecordsError(
            f"{shown}: schema version {found} is newer than this tipsomaly's "
            f"({SCHEMA_VERSION}); upgrade tipsomaly to use it"
        )
    for version in range(found, SCHEMA_VERSION):
        STEPS[version](conn)
        logger.info(
            "records database %s upgraded from schema %d to %d", shown, version, version + 1
        )
    if found != SCHEMA_VERSION:
        conn.execute(schema_version.update().values(version=SCHEMA_VERSION, updated_at=time.time()))
    return found, SCHEMA_VERSION


__all__ = ["ADVISORY_LOCK", "STEPS", "upgrade"]
