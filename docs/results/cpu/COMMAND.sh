#!/usr/bin/env bash
# Exact commands behind docs/results/cpu (2-core CPU box, shared with other jobs).
set -euo pipefail
msdn synth --task lung -o data/lung_cpu --split 40/12/16 --size 128 --slices 16 --workers 2
msdn synth --task cochlea -o data/cochlea_cpu --split 24/12/12 --size 128 --slices 16 --workers 2
msdn experiment --preset cpu \
    --task lung=data/lung_cpu/manifest.json --task cochlea=data/cochlea_cpu/manifest.json \
    --out docs/results/cpu
