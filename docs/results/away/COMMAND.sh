#!/usr/bin/env bash
# Effect of --away-fraction: U-Net (small, base width 8, 64x64 patches) on the CPU lung set, trained
# with only target-centred patches (0.0, the paper) and with half of the patches away from the target
# (0.5), 3 seeds each; every best-validation checkpoint evaluated on the target region and on whole
# slices. Same budget as the cpu experiment (10 epochs x 30 batches of 4, lr 1e-3).
set -euo pipefail
DATA=${DATA:-data/lung_cpu/manifest.json}
OUT=${OUT:-docs/results/away}
for seed in 0 1 2; do
  for away in 0.0 0.5; do
    run="$OUT/runs/away_${away}_s${seed}"
    msdn train --manifest "$DATA" --out "$run" --model unet --preset small --seed "$seed" \
        --model-option base_channels=8 --patch-size 64 --lr 1e-3 --lr-patience 3 --early-stop 10 \
        --epochs 10 --steps-per-epoch 30 --away-fraction "$away" --threads 1 --device cpu --no-progress
    for region in target full; do
      msdn evaluate --checkpoint "$run/best.pt" --manifest "$DATA" --region "$region" \
          --quiet --json "$OUT/away_${away}_s${seed}_${region}.json"
    done
  done
done
