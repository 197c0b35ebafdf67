#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Used by README.md and .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
.venv/bin/python -m pip install -q -e '.[dev,fast]'
.venv/bin/python -m pytest -q tests "$@"
