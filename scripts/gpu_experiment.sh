#!/usr/bin/env bash
# Protocol 2 at the critical cells on one GPU (issue 10, item 4), sized for about 10 minutes on one
# H200: generator-v4 lung data 160/40/80, the paper's networks (`--preset gpu_v2`, see
# model_export/experiment/presets.py): U-Net at 160, 60 and 12 strong cases, MSDN-, MSDN (2 strong + 2
# weak per batch) and MSDN (proportional batches) at 12-148, MSDN- at 160-0; 3 repeats; all 21 runs at
# once on the one GPU. The runs are resumable: run the script again to continue an interrupted job.
#
# Needs only the repository: it installs what the Python at $PYTHON lacks (a CUDA torch from the
# PyTorch index when torch is missing; nibabel, monai, ... from PyPI), or, on a machine without a
# network, wheels placed in .whl/ (pure-Python: nibabel, monai, pydicom; see docs/training.md).
#
# Environment:
#   PYTHON     interpreter (default python3)
#   OUT        folder that receives the report files (default runs/gpu_v2/report)
#   WORK       experiment folder with the runs (default runs/gpu_v2)
#   BUDGET_S   seconds for the training stage before it is stopped and reported (default 500)
#   JOBS       runs in parallel (default: the preset's 21)
#   DRY_RUN=1  tiny sizes on the CPU, to test this script's path (about a minute on 2 idle cores)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WORK=${WORK:-runs/gpu_v2}
OUT=${OUT:-$WORK/report}
BUDGET_S=${BUDGET_S:-500}
DRY_RUN=${DRY_RUN:-0}
export PYTHONUNBUFFERED=1
t_start=$(date +%s)

# -- 1. Python packages --------------------------------------------------------------------------
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/msdn-site .whl/*.whl
  export PYTHONPATH=/tmp/msdn-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "torch>=2.5,<=2.13.0" --index-url https://download.pytorch.org/whl/cu126
fi
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"nibabel": "nibabel>=5.0", "monai": "monai>=1.4", "scipy": "scipy>=1.10", "matplotlib": "matplotlib>=3.7",
        "pydicom": "pydicom>=2.4", "tqdm": "tqdm>=4.60", "yaml": "pyyaml>=6.0"}
print(" ".join(spec for mod, spec in need.items() if importlib.util.find_spec(mod) is None))
EOF
)
if [ -n "$missing" ]; then
  # shellcheck disable=SC2086
  "$PY" -m pip install -q $missing
fi
msdn() { "$PY" -c "import sys; from model_export.cli import main; sys.exit(main())" "$@"; }

# -- 2. data and sizes -----------------------------------------------------------------------------
mkdir -p "$WORK" "$OUT"
if [ "$DRY_RUN" = 1 ]; then
  DATA=$WORK/data_dry
  [ -f "$DATA/manifest.json" ] || msdn synth --task lung --version 4 -o "$DATA" --split 14/2/2 --size 128 --slices 16 --workers 2
  # tiny: small networks, 1 epoch of 1 batch, CPU, 2 runs at a time, 1 repeat
  EXTRA=(--device cpu --jobs "${JOBS:-2}" --repeats 1 --epochs 1 --steps-per-epoch 1
         --train-option preset=small --train-option patch_size=48
         --train-option 'model_options={"base_channels": 4, "head_channels": 8, "head_convs": 1}')
  TASK_OPTS='"train_cases": 14, "val_cases": 2, "test_cases": 2'
  CURVE='"curve": {"method": "unet", "strong": [3, 6], "repeats": 2, "select": [3]}'
else
  "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.__version__, torch.cuda.get_device_name(0))"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  DATA=data/lung_gpu
  [ -f "$DATA/manifest.json" ] || msdn synth --task lung --version 4 -o "$DATA" --split 160/40/80 --size 128 --slices 16 \
      --workers "$(nproc)"
  EXTRA=(--device cuda ${JOBS:+--jobs "$JOBS"})
  TASK_OPTS=''
  CURVE=''
fi

# the preset, with the data's manifest (and the dry run's sizes)
"$PY" - "$WORK/experiment_config.json" "$DATA/manifest.json" "$TASK_OPTS" "$CURVE" <<'EOF'
import json, sys
from model_export.experiment.presets import EXPERIMENT_PRESETS
path, manifest, task_opts, curve = sys.argv[1:5]
cfg = json.loads(json.dumps(EXPERIMENT_PRESETS["gpu_v2"]))
cfg["tasks"][0]["manifest"] = manifest
if task_opts:
    cfg["tasks"][0].update(json.loads("{" + task_opts + "}"))
if curve:
    cfg.update(json.loads("{" + curve + "}"))
open(path, "w").write(json.dumps(cfg, indent=1))
EOF
# relative manifests in a config file are read against the file's folder: store it absolute
"$PY" - "$WORK/experiment_config.json" <<'EOF'
import json, os, sys
p = sys.argv[1]; c = json.load(open(p))
for t in c["tasks"]:
    t["manifest"] = os.path.abspath(t["manifest"])
open(p, "w").write(json.dumps(c, indent=1))
EOF
echo "setup: $(( $(date +%s) - t_start )) s"

# -- 3. train and test (stopped after BUDGET_S; finished runs are kept), then the report -------------
set +e
timeout --signal=TERM --kill-after=20 "$BUDGET_S" \
  "$PY" -c "import sys; from model_export.cli import main; sys.exit(main())" \
  experiment --config "$WORK/experiment_config.json" --out "$WORK" "${EXTRA[@]}" 2>&1 | tee "$WORK/experiment.log" | grep -v "saved checkpoint"
rc=${PIPESTATUS[0]}
set -e
echo "experiment exit status $rc (124: stopped at the budget) after $(( $(date +%s) - t_start )) s"
msdn experiment --out "$WORK" --report-only >/dev/null
for f in table.md paired.csv summary.csv results.csv per_case.csv curve.csv dice_vs_strong.png experiment.log; do
  [ -f "$WORK/$f" ] && cp "$WORK/$f" "$OUT/"
done
nvidia-smi --query-gpu=memory.used --format=csv,noheader 2>/dev/null || true
echo "report in $OUT ($(( $(date +%s) - t_start )) s in all)"
