#!/usr/bin/env bash
# The exact commands behind docs/results/full_series/ (from the repository root, 2 shared CPU cores).
# 1. the fixed benchmark split: 40 full-size synthetic chest CT series (generator v5, 256 x 256,
#    80-160 slices, seed 2026), written to data/full_series_256 (not committed)
# 2. all three modes on the fp32 model, FROC traced from proposals down to 0.01, operating point at
#    the model card's calibrated proposal threshold (the service's default).
#    LIMIT: series of the split run (default all 40). int8: not run in the committed numbers (this
#    host has no VNNI, so the service serves fp32; add --int8 yes for its rows).
set -euo pipefail
cd "$(dirname "$0")/../../.."
scripts/make_full_series_benchmark.sh data/full_series_256 256 40
PYTHONPATH=. .venv/bin/python benchmarks/quality.py --model "${MODEL:-models/default.onnx}" \
  --manifest data/full_series_256/manifest.json --out docs/results/full_series \
  --int8 no --limit "${LIMIT:-40}" --max-candidates 50 --threads 1
