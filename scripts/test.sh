#!/usr/bin/env bash
# Set up a virtual environment with the test tools and run the whole test suite.
# torch is pinned to the CPU build CI uses; pass extra pytest arguments after the script name.
set -euo pipefail
cd "$(dirname "$0")/.."
# The browser test of `tipsomaly serve`'s page drives Debian's chromium (tests/serve); install it
# where we can (apt-get, as root, not there yet), quietly. Never fatal: without it that test
# skips, saying why.
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] \
    && ! { command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; }; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      chromium chromium-driver; } >/dev/null 2>&1 \
    || echo "note: could not install chromium and chromium-driver; the browser test will skip" >&2
fi
# The records tests start a real PostgreSQL server (initdb, pg_ctl) in a temporary folder;
# install Debian's postgresql likewise (quiet, never fatal: without it those tests skip).
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && ! command -v pg_ctl >/dev/null 2>&1 \
    && ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1; then
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      postgresql; } >/dev/null 2>&1 \
    || echo "note: could not install postgresql; the PostgreSQL records tests will skip" >&2
fi
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0" -e ".[test]"
# pytest exits 5 when it collects no tests: with `set -e` that fails the run, as it should.
python -m pytest "$@"
