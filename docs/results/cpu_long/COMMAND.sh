#!/usr/bin/env bash
# Run from the repository root after docs/results/cpu/COMMAND.sh has written data/lung_cpu and data/cochlea_cpu.
set -euo pipefail
msdn experiment --config docs/results/cpu_long/experiment_config.json --out docs/results/cpu_long
