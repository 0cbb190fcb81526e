#!/usr/bin/env bash
# Set up (scripts/setup.sh: the project's virtual environment .venv) and run the whole test suite
# on CPU with its python: the project's tests, then timm's own model tests for the conformer_*
# models (scripts/timm_model_tests.sh, against the installed timm). Both run in one
# pytest process per core (pytest-xdist; each test uses one torch thread). Arguments are passed to
# pytest and run the project's tests only, e.g. `-m "not slow"` for the unit tier (about a minute).
# PYTHON=/path/to/python3 chooses the interpreter .venv is made from.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=$(realpath "${VENV:-.venv}")/bin/python
if [[ $# -gt 0 ]]; then
  exec "$PY" -m pytest tests "$@"
fi
"$PY" -m pytest tests -n auto --dist worksteal
PYTHON=$PY exec bash scripts/timm_model_tests.sh -n auto --dist worksteal  # timm's tests, one process per core too
