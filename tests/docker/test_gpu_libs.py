"""scripts/check_gpu_libs.py: the GPU image's library set lets the CUDA provider resolve everything but
the driver. No GPU needed; the positive check needs the multi-gigabyte CUDA wheels, so it is opt-in:

    python3 -m venv /tmp/gpu-venv && /tmp/gpu-venv/bin/pip install \\
        -r <(python3 docker/requirements.py 'onnxruntime-gpu[cuda,cudnn]') -c docker/constraints-gpu.txt
    MSDN_GPU_LIBS_PYTHON=/tmp/gpu-venv/bin/python pytest tests/docker/test_gpu_libs.py

The negative check always runs: this venv's onnxruntime-gpu without the nvidia wheels must fail it,
naming the missing CUDA libraries (what the old image shipped).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "check_gpu_libs.py"


def _run(python: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, str(SCRIPT), *args], capture_output=True, text=True, timeout=300, check=False, cwd=ROOT
    )


def _has_cuda_wheels(python: str) -> bool:
    code = "import onnxruntime, pathlib; print((pathlib.Path(onnxruntime.__file__).parents[1] / 'nvidia').is_dir())"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    if out.returncode != 0:
        pytest.skip(f"{python} has no onnxruntime")
    return out.stdout.strip() == "True"


def test_without_the_cuda_wheels_the_check_fails_naming_them():
    if _has_cuda_wheels(sys.executable):
        pytest.skip("this venv has the nvidia wheels; the opt-in test below covers it")
    result = _run(sys.executable)
    assert result.returncode == 1, result.stdout
    row = next(line for line in result.stdout.splitlines() if line.startswith("| libonnxruntime_providers_cuda.so"))
    assert "libcublas.so.13 not found" in row and "libcublasLt.so.13 not found" in row
    assert "libcuda.so.1" in row.split("|")[3]  # the driver: allowed missing, listed apart
    assert "FAILED" in result.stdout


@pytest.mark.skipif(not os.environ.get("MSDN_GPU_LIBS_PYTHON"), reason="opt-in: set MSDN_GPU_LIBS_PYTHON")
def test_gpu_library_set_resolves_everything_but_the_driver():
    python = os.environ["MSDN_GPU_LIBS_PYTHON"]
    assert _has_cuda_wheels(python)
    result = _run(python)
    assert result.returncode == 0, result.stdout
    rows = [line for line in result.stdout.splitlines() if line.startswith("| lib") and "dependencies" not in line]
    assert len(rows) > 10 and all(line.rstrip().endswith("| none |") for line in rows), result.stdout
    assert "| libonnxruntime_providers_cuda.so |" in result.stdout and "libcudnn_cnn.so.9" in result.stdout
