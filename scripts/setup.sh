#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv: the core, the `cochlea` command
# line, PyTorch (CPU build) and, with --test, the test tools and the slicer-core wheel (real MRML).
# Idempotent: a second run only checks that everything is installed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
VENV="${VENV:-.venv}"
# torch 2.13.0: on this project's machines pip takes the CPU build from local disk. Elsewhere set
# TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu" to avoid the multi-GB CUDA build.
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
EXTRAS="torch"
[ "${1:-}" = "--test" ] && EXTRAS="torch,test"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating $VENV with $PYTHON ($("$PYTHON" --version 2>&1))"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
stamp="$VENV/.cochlea-setup-$EXTRAS-$(cat pyproject.toml | sha256sum | cut -c1-12)"
if [ -f "$stamp" ]; then
  echo "setup: $VENV is up to date"
  exit 0
fi
echo "setup: installing $TORCH_SPEC (CPU build)"
# shellcheck disable=SC2086
"${PIP[@]}" install ${TORCH_PIP_ARGS:-} "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import torch" >/dev/null 2>&1 || { echo "setup: torch did not install" >&2; exit 1; }
echo "setup: installing CochleaToolkit [$EXTRAS] (editable)"
"${PIP[@]}" install -e ".[$EXTRAS]" "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" || true
"$VENV/bin/python" -c "import CochleaCommonLib, SimpleITK, vtk" || { echo "setup: install failed" >&2; exit 1; }
rm -f "$VENV"/.cochlea-setup-"$EXTRAS"-*
touch "$stamp"
echo "setup: done ($VENV)"
