#!/usr/bin/env bash
# Set up everything the tests need (venv, Orthanc) and run the whole test suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh tests/service -x`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/install_orthanc.sh
# dciodvfy validates our DICOM SEGs; once installed its test must run, never skip.
if bash scripts/install_dicom3tools.sh; then export MSDN_REQUIRE_DCIODVFY=${MSDN_REQUIRE_DCIODVFY:-1}; fi
# Orthanc is installed now: its integration tests must run, never skip.
export MSDN_REQUIRE_ORTHANC=${MSDN_REQUIRE_ORTHANC:-1}
exec .venv/bin/python -m pytest -q "$@"
