#!/usr/bin/env bash
# Set up (if needed) and run the demo: the seed's file-summary example over HTTP against the
# built-in simulator.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
.venv/bin/python -m pip install -q -e '.[fast]'
.venv/bin/python examples/demo.py
