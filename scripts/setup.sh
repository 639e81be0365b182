#!/usr/bin/env bash
# Create .venv and install dype into it.
#   bash scripts/setup.sh         # core + CLI (torch, matplotlib): enough for `dype plan`
#   bash scripts/setup.sh --dev   # everything the tests need: InvokeAI 6.14.2, diffusers 0.40.0, pytest, ruff
# torch is pinned to 2.13.0 (a CPU wheel is on this project's machines) and installed first; it is pinned
# again in the same command as invokeai and torchvision 0.28.0, or pip would upgrade it to a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH="torch==2.13.0"

[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip_install() {
  # pip's "Location ... is ignored" lines about local mirrors are noise; keep everything else.
  .venv/bin/python -m pip install --disable-pip-version-check "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }
  return "${PIPESTATUS[0]}"
}
pip_install -q "$TORCH"
if [ "${1:-}" = "--dev" ]; then
  # invokeai is pinned to the release the tests are written against (the `invokeai` extra allows 6.14.x).
  pip_install -q "$TORCH" "torchvision==0.28.0" "invokeai==6.14.2" -e ".[invokeai,diffusers,cli,dev]"
else
  pip_install -q "$TORCH" -e ".[cli]"
fi
.venv/bin/python -c "import torch, dype; print(f'dype {dype.__version__} ready (torch {torch.__version__})')"
