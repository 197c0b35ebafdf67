#!/usr/bin/env bash
# Set up (if needed) and run the demo: the seed's file-summary example over HTTP against the
# built-in simulator.
set -euo pipefail
. "$(dirname "$0")/_venv.sh" fast
.venv/bin/python examples/demo.py
