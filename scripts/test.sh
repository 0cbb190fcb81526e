#!/usr/bin/env bash
# Set up (scripts/setup.sh: the project's virtual environment .venv) and run the whole test suite
# on CPU with its python. PYTHON=/path/to/python3 chooses the interpreter .venv is made from.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${VENV:-.venv}/bin/python" -m pytest tests "$@"
