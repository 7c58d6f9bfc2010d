#!/usr/bin/env bash
# The exact commands behind docs/results/full_series_512/ (from the repository root, 2 shared CPU cores).
# 1. the fixed benchmark split at the size real CT has: the same 40 series as docs/results/full_series/
#    (generator v5, seed 2026, 80-160 slices) drawn at 512 x 512 in-plane (0.55-0.7 mm pixels),
#    written to data/full_series_512 (not committed)
# 2. all three modes on the fp32 model through the service pipeline, which brings every series onto
#    the model card's grid (input.spacing_mm 1.2539 mm, orientation LPS: msdn_core.grid) and the answer
#    back onto the 512 x 512 grid, where it is scored; FROC from proposals down to 0.01, operating point
#    at the card's calibrated threshold.
set -euo pipefail
cd "$(dirname "$0")/../../.."
MSDN_SYNTH_WORKERS=${MSDN_SYNTH_WORKERS:-1} scripts/make_full_series_benchmark.sh data/full_series_512 512 40
PYTHONPATH=. .venv/bin/python benchmarks/quality.py --model "${MODEL:-models/default.onnx}" \
  --manifest data/full_series_512/manifest.json --out docs/results/full_series_512 \
  --int8 no --limit "${LIMIT:-40}" --max-candidates 50 --threads 1
