#!/usr/bin/env bash
# Set up (if needed) and run the test suite. Used by README.md and .ci/run.
set -euo pipefail
. "$(dirname "$0")/_venv.sh" dev,fast,ray,schema,metrics,report,parquet,datasets,duckdb
.venv/bin/python -m pytest -q --durations=30 tests "$@"
