"""The records database's tables (SQLAlchemy Core), at schema version :data:`SCHEMA_VERSION`.

``records``: one row per decision (what was decided, by which profile version and model, how
fast); its ``verdict``/``reviewer``/``reviewed_at`` are the latest review, copied there so that
the review view can filter on them. ``reviews``: every review, in order (the audit trail).
``schema_version``: one row, the version the tables are at (:mod:`.migrations` moves it).

Times are seconds since the epoch (UTC, float): the same in SQLite and PostgreSQL, and a range
filter is a plain comparison.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

#: the version these tables are at; :mod:`.migrations` upgrades older databases to it
SCHEMA_VERSION = 2

#: an id column: BIGINT on PostgreSQL, INTEGER (the rowid alias, autoincrementing) on SQLite
Id = BigInteger().with_variant(Integer(), "sqlite")

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("id", Integer, primary_key=True),  # always 1: one row
    Column("version", Integer, nullable=False),
    Column("updated_at", Float, nullable=False),
)

records = Table(
    "records",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("time", Float, nullable=False, doc="when the decision was made (epoch seconds)"),
    Column("source", String(16), nullable=False, doc="serve or predict"),
    Column("station", String(200), doc="the client's X-Station-Id header (serve)"),
    Column("filename", Text, doc="the upload's file name, or predict's input path"),
    Column("image_sha256", String(64), nullable=False),
    Column("image_kept", Boolean, nullable=False, default=False),
    Column("map_sha256", String(64), doc="the 8-bit grey map PNG kept with the image"),
    Column("width", Integer),
    Column("height", Integer),
    Column("class_name", String(200), nullable=False),
    Column("profile_id", String(64), doc="the deciding profile version's digest"),
    Column("profile_version", Integer),
    Column("mode", String(16), nullable=False),
    Column("image_score", Float),
    Column("score_cls1", Float),
    Column("score_cls2", Float),
    Column("threshold", Float),
    Column("threshold_source", String(16)),
    Column("pixel_threshold", Float),
    Column("is_anomalous", Boolean),
    Column("defects", JSON, doc="the defect records (bbox, area_px, peak, ...) or null"),
    Column("roi", String(16)),
    Column("identity", JSON, nullable=False, doc="identity.py's record of the model"),
    Column("latency_ms", Float, doc="from the request's arrival to this record"),
    Column("error", Text),
    # v2: the latest review
    Column("verdict", String(20)),
    Column("reviewer", String(200)),
    Column("reviewed_at", Float),
)
Index("ix_records_class_id", records.c.class_name, records.c.id)
Index("ix_records_time", records.c.time)
Index("ix_records_station", records.c.station)
Index("ix_records_sha256", records.c.image_sha256)
Index("ix_records_verdict", records.c.verdict)

reviews = Table(
    "reviews",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("record_id", Id, ForeignKey("records.id"), nullable=False, index=True),
    Column("time", Float, nullable=False),
    Column("verdict", String(20), nullable=False),
    Column("reviewer", String(200), nullable=False),
)

#: the columns a record is written with (all but the id and the review)
RECORD_FIELDS = tuple(
    c.name for c in records.columns if c.name not in ("id", "verdict", "reviewer", "reviewed_at")
)

__all__ = ["RECORD_FIELDS", "SCHEMA_VERSION", "metadata", "records", "reviews", "schema_version"]
