#!/usr/bin/env bash
# GPU check: on a fresh GPU machine (an NVIDIA driver, nothing else) measure what the GPU serving path
# does and write it as Markdown under docs/results/gpu/. Meant to finish within 8 minutes.
#
#   bash scripts/gpu_check.sh                   # installs into /tmp/msdn-gpu-venv, then runs everything
#   GPU_CHECK_DRY_RUN=1 GPU_CHECK_PYTHON=.venv/bin/python bash scripts/gpu_check.sh   # no GPU: the CPU parts
#
# Steps (each bounded by what is left of GPU_CHECK_BUDGET_S; a failed step is reported and the others
# still run; the exit status is 1 when any failed):
#   1. nvidia-smi: GPU, driver (>= 580 for the CUDA 13 wheels of docker/constraints-gpu.txt);
#   2. a venv with the GPU image's pinned set (onnxruntime-gpu[cuda,cudnn], the nvidia-* wheels), the
#      export and training tools (onnxscript, onnx-ir, MONAI) and pytest; PyTorch is reused from the system Python when it sees the GPU
#      (--system-site-packages), else installed (torch <= 2.13.0); TensorRT 10 (tensorrt-cu13-libs,
#      the libnvinfer.so.10 this ONNX Runtime links) is tried and left out when it cannot be had;
#   3. scripts/check_gpu_libs.py: the CUDA provider resolves every library but the driver;
#   4. the GPU tests (they skip without CUDA): tests/service/test_providers.py, test_model.py,
#      tests/docker/test_gpu_libs.py, the trainer's CUDA test;
#   5. benchmarks/inference.py --device cuda --preset paper: PyTorch eager vs ORT CUDA fp32 / fp16
#      (IO binding) vs TensorRT fp16 at 1x128^2, 8x128^2, 1x512^2, 32x512^2, TFLOP/s vs the dense fp16 peak;
#   6. benchmarks/series_e2e.py: a GPU_CHECK_SLICES-slice (300) 512x512 series through `msdn serve`
#      on cuda (fp32, fp16) and tensorrt;
#   7. docs/results/gpu/<date>-<gpu>.md with all of it and the targets checked.
# Environment:
#   GPU_CHECK_PYTHON   use this interpreter as it is (no venv, no install)
#   GPU_CHECK_VENV     venv folder (default /tmp/msdn-gpu-venv; reused when it already has everything)
#   GPU_CHECK_WHEELS   a folder of wheels to install from offline (pip --no-index --find-links)
#   GPU_CHECK_OUT      where the report goes (default docs/results/gpu)
#   GPU_CHECK_BUDGET_S total time (default 480)
#   GPU_CHECK_SLICES   slices of the end-to-end series (default 300)
#   GPU_CHECK_DRY_RUN  1: no GPU needed; benchmark and end-to-end run on the CPU with tiny inputs
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET_S:-480}
DRY=${GPU_CHECK_DRY_RUN:-0}
SLICES=${GPU_CHECK_SLICES:-300}
OUT_DIR=${GPU_CHECK_OUT:-docs/results/gpu}
WORK=$(mktemp -d /tmp/msdn-gpu-check.XXXXXX)
FAILED=()
STEPS=()

log() { echo "[gpu-check $(date +%H:%M:%S)] $*"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }
step() {  # step NAME MAX_SECONDS CMD...: run with a timeout of min(MAX, time left); record the outcome
  local name=$1 max=$2 t0 rc limit
  shift 2
  limit=$(left)
  [ "$limit" -gt "$max" ] && limit=$max
  if [ "$limit" -le 5 ]; then
    STEPS+=("| $name | not run: time budget spent | - |")
    FAILED+=("$name")
    return 1
  fi
  log "$name (up to ${limit} s)"
  t0=$(date +%s)
  timeout --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  tail -n 25 "$WORK/$name.log"
  local took=$(($(date +%s) - t0))
  if [ $rc = 0 ]; then
    STEPS+=("| $name | ok | $took s |")
  else
    [ $rc = 124 ] && STEPS+=("| $name | TIMED OUT after $limit s | $took s |") || STEPS+=("| $name | FAILED (exit $rc) | $took s |")
    FAILED+=("$name")
  fi
  return $rc
}

# ---- 1. the GPU ------------------------------------------------------------------------------
GPU="none (dry run)"
DRIVER="-"
if command -v nvidia-smi > /dev/null && nvidia-smi > "$WORK/nvidia-smi.txt" 2>&1; then
  GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -n 1)
  DRIVER=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -n 1)
  log "GPU $GPU, driver $DRIVER"
  if [ "${DRIVER%%.*}" -lt 580 ] 2> /dev/null; then
    log "driver $DRIVER < 580: the CUDA 13 libraries of the GPU image need R580 or newer"
    FAILED+=("driver")
  fi
elif [ "$DRY" != 1 ]; then
  echo "gpu_check: no GPU here (nvidia-smi fails); GPU_CHECK_DRY_RUN=1 runs the CPU parts" >&2
  exit 1
fi

# ---- 2. the environment ----------------------------------------------------------------------
install_env() {
  local venv=${GPU_CHECK_VENV:-/tmp/msdn-gpu-venv} sys_py=python3 pip_src=()
  command -v python3 > /dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends python3 python3-venv; }
  python3 -c 'import venv, ensurepip' 2> /dev/null || { apt-get update -q && apt-get install -y -q --no-install-recommends python3-venv; }
  [ -n "${GPU_CHECK_WHEELS:-}" ] && pip_src=(--no-index --find-links "$GPU_CHECK_WHEELS")
  if [ ! -x "$venv/bin/python" ]; then
    if $sys_py -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2> /dev/null; then
      log "reusing the system PyTorch ($($sys_py -c 'import torch; print(torch.__version__)'))"
      $sys_py -m venv --system-site-packages "$venv"
    else
      $sys_py -m venv "$venv"
    fi
  fi
  local pip=("$venv/bin/python" -m pip install -q --disable-pip-version-check "${pip_src[@]}")
  "$venv/bin/python" -c 'import torch' 2> /dev/null || "${pip[@]}" "torch<=2.13.0" || return 1
  "${pip[@]}" -r <(python3 docker/requirements.py "onnxruntime-gpu[cuda,cudnn]") -c docker/constraints-gpu.txt \
    "onnxscript>=0.1" "onnx-ir>=0.1" "monai>=1.4" "tqdm>=4.60" "pytest>=8.0" "pytest-timeout>=2.2" "httpx>=0.27" || return 1
  "${pip[@]}" "tensorrt-cu13-libs==10.16.1.11" > "$WORK/tensorrt-install.log" 2>&1 \
    || log "TensorRT 10 not installable here (see $WORK/tensorrt-install.log): TensorRT rows will say so"
  echo "$venv/bin/python" > "$WORK/python"
}
if [ -n "${GPU_CHECK_PYTHON:-}" ]; then
  PY=$GPU_CHECK_PYTHON
  STEPS+=("| environment | given: $PY | - |")
else
  export -f install_env log
  export WORK
  step environment 300 bash -c install_env
  PY=$(cat "$WORK/python" 2> /dev/null || echo python3)
fi
export PYTHONPATH=$ROOT PYTHONUNBUFFERED=1
VERSIONS=$("$PY" -c '
import importlib.metadata as m
names = ["torch", "onnxruntime-gpu", "onnxruntime", "nvidia-cuda-runtime", "nvidia-cudnn-cu13", "tensorrt-cu13-libs"]
out = []
for n in names:
    try:
        out.append(f"{n} {m.version(n)}")
    except m.PackageNotFoundError:
        pass
print(", ".join(out))' 2> /dev/null || echo "unknown")
log "versions: $VERSIONS"

# ---- 3-6. checks and measurements --------------------------------------------------------------
step cuda-libraries 60 "$PY" scripts/check_gpu_libs.py
"$PY" scripts/check_gpu_libs.py --tensorrt > "$WORK/tensorrt-libraries.log" 2>&1
MSDN_GPU_LIBS_PYTHON=$PY step gpu-tests 150 "$PY" -m pytest -q -p no:cacheprovider -rs \
  tests/service/test_providers.py tests/service/test_model.py tests/docker/test_gpu_libs.py \
  tests/model_export/training/test_trainer.py::test_cuda_mixed_precision
if [ "$DRY" = 1 ]; then
  step inference-benchmark 120 "$PY" benchmarks/inference.py --device cpu --preset small --cases 1x128x128 \
    --runs 10 --warmup 1 --output "$WORK/inference.md"
  step series-end-to-end 120 "$PY" benchmarks/series_e2e.py --providers cpu cuda --precision fp32 --slices 4 \
    --repeats 1 --output "$WORK/e2e.md"
else
  step inference-benchmark 240 "$PY" benchmarks/inference.py --device cuda --preset paper --runs 10 --warmup 3 \
    --trt-cache "$WORK/trt" --output "$WORK/inference.md"
  step series-end-to-end 180 "$PY" benchmarks/series_e2e.py --providers cuda tensorrt --precision fp32 fp16 \
    --slices "$SLICES" --repeats 3 --output "$WORK/e2e.md"
fi

# ---- 7. the report -----------------------------------------------------------------------------
mkdir -p "$OUT_DIR"
slug=$(echo "$GPU" | tr -cs 'A-Za-z0-9' '-' | sed 's/-*$//' | tr 'A-Z' 'a-z')
REPORT=$OUT_DIR/$(date +%Y-%m-%d)-${slug:-gpu}.md
[ "$DRY" = 1 ] && REPORT=$WORK/report-dry-run.md
"$PY" - "$WORK" "$REPORT" "$GPU" "$DRIVER" "$VERSIONS" "$(($(date +%s) - START))" "$DRY" "${STEPS[@]}" << 'PY'
import re
import sys
from pathlib import Path

work, report, gpu, driver, versions, seconds, dry, *steps = sys.argv[1:]
work = Path(work)


def read(name):
    path = work / name
    return path.read_text().strip() if path.is_file() else "(not produced)"


def cell(line, index):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    return cells[index] if len(cells) > index else ""


bench = read("inference.md")
targets = []
rows = [line for line in bench.splitlines() if line.startswith("|") and "---" not in line][1:]
big = [r for r in rows if cell(r, 2) == "32x512x512"]
ort16 = next((r for r in big if cell(r, 3).startswith("ORT CUDA EP fp16")), None)
trt = next((r for r in big if cell(r, 3).startswith("ORT TensorRT EP fp16") and "not run" not in cell(r, 3)), None)
if ort16 and cell(ort16, 11) not in ("", "-"):
    share = float(cell(ort16, 11))
    targets.append(f"| ORT CUDA fp16, 32x512x512: >= 0.70 of the dense fp16 peak | {share:.2f} | {'met' if share >= 0.7 else 'NOT met'} |")
if ort16 and trt:
    a, b = float(cell(ort16, 4)), float(cell(trt, 4))
    targets.append(f"| TensorRT fp16 at least as fast as ORT CUDA fp16 (32x512x512, ms) | {b:.2f} vs {a:.2f} | {'met' if b <= a else 'NOT met'} |")
elif ort16:
    targets.append("| TensorRT fp16 at least as fast as ORT CUDA fp16 | TensorRT did not run | NOT measured |")
e2e = read("e2e.md")
walls = [float(cell(r, 4)) for r in e2e.splitlines() if r.startswith("| ") and re.fullmatch(r"[\d.]+", cell(r, 4))]
if walls and dry != "1":
    best = min(walls)
    targets.append(f"| 300-slice 512x512 series through /segment < 3 s | {best:.2f} s (best case) | {'met' if best < 3 else 'NOT met'} |")
text = f"""# GPU check: {gpu}

`scripts/gpu_check.sh`{' (dry run, no GPU: CPU stand-ins)' if dry == '1' else ''}, {seconds} s in all.
Driver {driver}; {versions}.

## Steps

| step | outcome | time |
| --- | --- | --- |
{chr(10).join(steps)}

## Targets

| target | measured | verdict |
| --- | --- | --- |
{chr(10).join(targets) or '| (none measured) | | |'}

## CUDA provider libraries (`scripts/check_gpu_libs.py`)

{read('cuda-libraries.log')}

TensorRT provider: {read('tensorrt-libraries.log').splitlines()[-1] if (work / 'tensorrt-libraries.log').is_file() else '-'}

## Inference (`benchmarks/inference.py`)

{bench}

## Service end to end (`benchmarks/series_e2e.py`)

{e2e}

## GPU tests

```
{read('gpu-tests.log')[-3000:]}
```
"""
Path(report).write_text(text, encoding="utf-8")
print(f"report: {report}")
PY
log "report: $REPORT"
rm -rf "$WORK/trt"
if [ ${#FAILED[@]} -gt 0 ]; then
  log "FAILED: ${FAILED[*]} (logs in $WORK)"
  exit 1
fi
log "all steps passed in $(($(date +%s) - START)) s"
