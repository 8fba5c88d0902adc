#!/usr/bin/env bash
# The GPU checks in one prepared run (< 5 minutes on a GPU machine); `--dry-run` runs them tiny on the CPU.
#   bash bench/gpu.sh [--dry-run]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
exec "$PY" bench/gpu.py "$@"
