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
