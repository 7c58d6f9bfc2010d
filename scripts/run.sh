#!/usr/bin/env bash
# The main job on the embedded default: set up, then build the default model and show it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/msdn summary --model msdn --preset small "$@"
