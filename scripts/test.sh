#!/usr/bin/env bash
# Set up everything the tests need (venv, Orthanc) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ -f scripts/install_orthanc.sh ]; then
  bash scripts/install_orthanc.sh
fi
exec .venv/bin/python -m pytest -q "$@"
