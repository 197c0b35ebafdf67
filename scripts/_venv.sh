# Sourced by demo.sh and test.sh: make .venv if absent and install the project into it.
# Usage: . scripts/_venv.sh EXTRAS
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
fi
.venv/bin/python -m pip install -q -e ".[$1]"
