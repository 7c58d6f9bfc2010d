#!/usr/bin/env bash
# The main job on the embedded default: set up (.venv, CPU), make sure the default model exists
# (committed; rebuilt on the spot with scripts/build_default_model.sh if missing), and serve it on
# http://127.0.0.1:8000 (MSDN_HOST / MSDN_PORT to change). Try it with the curl call in README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
MODEL=${MSDN_MODEL_PATH:-models/default.onnx}
if [ ! -f "$MODEL" ]; then
  echo "no model at $MODEL: building the default model (about 10 minutes on 2 CPU cores)"
  bash scripts/build_default_model.sh "$MODEL"
fi
exec .venv/bin/msdn serve --model "$MODEL" --host "${MSDN_HOST:-127.0.0.1}" --port "${MSDN_PORT:-8000}" "$@"
