#!/usr/bin/env bash
# Set up a virtual environment with the test tools and run the whole test suite.
# torch is pinned to the CPU build CI uses; pass extra pytest arguments after the script name.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install --quiet --upgrade pip
python -m pip install --quiet "torch==2.13.0" -e ".[test]"
# pytest exits 5 when it collects no tests: with `set -e` that fails the run, as it should.
python -m pytest "$@"
