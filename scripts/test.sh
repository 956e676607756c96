#!/usr/bin/env bash
# The README's test command: install what is needed, then run the whole test suite.
# Extra arguments go to pytest (e.g. -m "not slow" for the fast set).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec "${PYTHON:-python3}" -m pytest -q -ra "$@"
