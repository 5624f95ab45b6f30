from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
# Never touch the user's cache (weights, text embeddings) from the tests.
_TEST_HOME = tempfile.mkdtemp(prefix="tipsomaly-test-home-")
os.environ["TIPSOMALY_HOME"] = _TEST_HOME

from goldens import Golden, golden_dirs  # noqa: E402


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrise any test taking ``golden`` over every golden folder, by folder name."""
    if "golden" in metafunc.fixturenames:
        dirs = golden_dirs()
        metafunc.parametrize("golden", dirs, ids=[d.name for d in dirs], indirect=True)


_cache: dict[Path, Golden] = {}


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Golden:
    directory = request.param
    if directory not in _cache:
        _cache[directory] = Golden(directory)
    return _cache[directory]


def pytest_unconfigure(config: pytest.Config) -> None:
    """Remove the throw-away cache folder: the tests leave nothing behind in the temp dir."""
    shutil.rmtree(_TEST_HOME, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server on 127.0.0.1 for the session (tests/pg_server.py); the tests
    using it skip, saying why, where it cannot run."""
    import pg_server

    server = pg_server.start()
    if isinstance(server, str):
        pytest.skip(server)
    try:
        yield server
    finally:
        server.stop()
