"""Fixtures of the records tests: one store per test, on a real SQLite file and on a real
PostgreSQL server (tests/pg_server.py; skipped with the reason where it cannot run)."""

from __future__ import annotations

import pytest

pytest.importorskip("sqlalchemy", reason="sqlalchemy is not installed (the records extra)")

from tipsomaly.records.store import RecordStore  # noqa: E402


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database: a SQLite file, or a new database on the session's server."""
    if request.param == "sqlite":
        return str(tmp_path / "records.sqlite")
    return request.getfixturevalue("postgres").create_database()


@pytest.fixture
def store(db_url):
    s = RecordStore(db_url)
    yield s
    s.close()


def record(**fields) -> dict:
    """A record as serve writes one (the fields given replace the defaults)."""
    base = {
        "source": "serve",
        "image_sha256": "ab" * 32,
        "class_name": "tile",
        "mode": "fused",
        "image_score": 0.5,
        "threshold": 0.8,
        "threshold_source": "profile",
        "pixel_threshold": 0.4,
        "is_anomalous": False,
        "defects": [],
        "identity": {"model": {"name": "tiny"}},
        "profile_id": "p1",
        "profile_version": 1,
    }
    return {**base, **fields}
