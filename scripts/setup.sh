#!/usr/bin/env bash
# Create .venv and install msdn with its extras. Idempotent; safe to re-run.
#   MSDN_EXTRAS  extras to install (default: train,serve,dev)
#   MSDN_VENV    venv folder (default: .venv in the repository)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${MSDN_VENV:-.venv}
EXTRAS=${MSDN_EXTRAS:-train,serve,dev}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
# torch first, pinned: on these machines 2.13.0 is a local CPU build; a looser requirement on a
# machine with no torch pulls a multi-GB CUDA build. The serve extra alone needs no torch.
if [[ ",$EXTRAS," == *",train,"* ]] && ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  "$VENV/bin/python" -m pip install -q "torch==${MSDN_TORCH_VERSION:-2.13.0}"
fi
"$VENV/bin/python" -m pip install -q -e ".[${EXTRAS}]"
echo "msdn installed in $VENV (extras: $EXTRAS)"
