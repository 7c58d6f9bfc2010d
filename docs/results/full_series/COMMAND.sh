#!/usr/bin/env bash
# The exact commands behind docs/results/full_series/ (from the repository root, 2 shared CPU cores).
# 1. the fixed benchmark split: 40 full-size synthetic chest CT series (generator v5, 256 x 256,
#    80-160 slices, seed 2026), written to data/full_series_256 (not committed)
# 2. all three modes on the fp32 model (and on models/default.int8.onnx when it exists), FROC traced
#    from proposals down to 0.01, operating point at the service default threshold 0.5.
#    LIMIT: series of the split run; the committed numbers are the first 12 (LIMIT=40 for all).
set -euo pipefail
cd "$(dirname "$0")/../../.."
scripts/make_full_series_benchmark.sh data/full_series_256 256 40
PYTHONPATH=. .venv/bin/python benchmarks/quality.py --model "${MODEL:-models/default.onnx}" \
  --manifest data/full_series_256/manifest.json --out docs/results/full_series --threads 2 \
  --limit "${LIMIT:-12}"
