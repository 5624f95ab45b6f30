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


@pytest.fixture
def browser():
    """Headless Chromium driven by Selenium (1280x1200 CSS pixels, scale 1), its console and
    network events logged (``driver.get_log("browser")`` / ``("performance")``); skipped,
    saying why, without chromium, chromedriver or selenium (the test extra)."""
    chromium = next(filter(None, map(shutil.which, ("chromium", "chromium-browser"))), None)
    driver_path = shutil.which("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip(
            "no chromium/chromedriver on PATH: apt-get install chromium chromium-driver "
            "(scripts/test.sh does where apt-get is available)"
        )
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed (the test extra)"
    )
    from selenium.common.exceptions import WebDriverException

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--window-size=1280,1200", "--force-device-scale-factor=1"):  # fmt: skip
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    try:
        driver = webdriver.Chrome(service=webdriver.ChromeService(driver_path), options=options)
    except WebDriverException as exc:
        pytest.skip(f"chromium could not start: {exc.msg}")
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()
