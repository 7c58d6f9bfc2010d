#!/usr/bin/env bash
# Exact commands behind docs/results/cpu_v3 (2-core CPU box, shared with a default-model training run
# and helpers' tests), from the repository root.
set -euo pipefail
# generator-v4 lung cut-outs (one nodule per case), 40 train / 12 val / 40 test at 128x128x16
# (the same data as docs/results/cpu_v2)
msdn synth --task lung --version 4 -o data/lung_v2 --split 40/12/40 --size 128 --slices 16 --workers 2
# protocol 2 to convergence: learning curve (U-Net at 3, 10, 40 strong, 3 repeats), split selection,
# U-Net and MSDN 2:2 with 10 repeats at the selected split, U-Net at 40-0 with 10 repeats
# (resumable; 1 run at a time, 1 torch thread)
msdn experiment --preset cpu_v3 --task lung=data/lung_v2/manifest.json --out runs/cpu_v3 --jobs 1
# the report (copied here without the run folders)
msdn experiment --out runs/cpu_v3 --report-only
