#!/usr/bin/env bash
# The fixed whole-series benchmark: 40 held-out full-size synthetic chest CT series (generator
# version 5, 256 x 256 in-plane for CPU runs, 80-160 slices drawn per case, 0-4 nodules each), seed
# 2026 (training data use other seeds), all in the "test" split, NIfTI images + masks + manifest with
# per-nodule metadata. Data are not committed (data/ is ignored); this command makes them again, voxel
# for voxel. About 20-30 s per case on one core.
#
#   scripts/make_full_series_benchmark.sh [OUT] [SIZE] [CASES]
#   defaults: data/full_series_256, 256, 40     (512 for the full-resolution variant)
set -euo pipefail
cd "$(dirname "$0")/.."
MSDN=${MSDN:-.venv/bin/msdn}
OUT=${1:-data/full_series_256}
SIZE=${2:-256}
CASES=${3:-40}
$MSDN synth --task lung --version 5 -o "$OUT" --split "0/0/$CASES" --size "$SIZE" --seed 2026 \
  --workers "${MSDN_SYNTH_WORKERS:-2}"
