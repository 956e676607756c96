#!/usr/bin/env bash
# The README's test command: install what is needed (scripts/setup.sh --tests: the system
# tools the tests use, and .venv), then run the whole test suite with .venv's Python.
# Extra arguments go to pytest (e.g. -m "not slow" for the fast set).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --tests
exec .venv/bin/python -m pytest -q -ra "$@"
