#!/usr/bin/env bash
# Exact commands behind docs/results/cpu_v2 (2-core CPU box shared with other jobs), run from the
# repository root with this branch's code (PYTHONPATH=$PWD .venv/bin/msdn ...).
set -euo pipefail
# generator-v4 lung cut-outs (one nodule per case), 40 train / 12 val / 40 test at 128x128x16
msdn synth --task lung --version 4 -o data/lung_v2 --split 40/12/40 --size 128 --slices 16 --workers 2
# protocol 2: learning curve, split selection, main and ablation rows (resumable; stopped at the
# time budget, see README.md for what ran), 2 runs in parallel with 1 torch thread each
nice -n 10 msdn experiment --preset cpu_v2 --task lung=data/lung_v2/manifest.json --out runs/cpu_v2
# the report from the finished runs (copied here with the run folders left out)
msdn experiment --out runs/cpu_v2 --report-only
