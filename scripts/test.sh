#!/usr/bin/env bash
# Set everything up and run every check CI runs: ruff, the Slicer layout check, and the pytest suite
# (core, MRML on a real vtkMRMLScene from slicer-core, module self-tests, CLI end to end).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
export VTK_DEFAULT_OPENGL_WINDOW="${VTK_DEFAULT_OPENGL_WINDOW:-vtkEGLRenderWindow}"
echo "== ruff"
.venv/bin/ruff check .
if [ -f ../shared/tools/check_layout.py ]; then
  echo "== layout (../shared/tools/check_layout.py)"
  .venv/bin/python ../shared/tools/check_layout.py
fi
echo "== pytest"
.venv/bin/python -m pytest -q -p no:cacheprovider "$@"
