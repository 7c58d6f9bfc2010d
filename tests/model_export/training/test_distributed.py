"""DDP: 2 CPU processes on the gloo backend through torchrun end with identical weights and one checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from tests.model_export.tiny_data import write_tiny_dataset

REPO = Path(__file__).resolve().parents[3]


def test_two_process_gloo_training(tmp_path):
    manifest = write_tiny_dataset(tmp_path / "data", strong=3, weak=3, val=2, test=1)
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(Path(__file__).with_name("ddp_worker.py")),
            str(manifest),
            str(out),
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    w0 = torch.load(out / "rank0_weights.pt", weights_only=True)
    w1 = torch.load(out / "rank1_weights.pt", weights_only=True)
    assert w0.keys() == w1.keys()
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0, msg=k)
    # training really moved the weights, and rank 0 alone wrote the checkpoints
    last = torch.load(out / "last.pt", weights_only=True)
    assert last["card"]["training"]["world_size"] == 2
    for k in w0:
        torch.testing.assert_close(last["state_dict"][k], w0[k], rtol=0, atol=0, msg=k)
    assert sorted(p.name for p in out.glob("*.pt")) == ["best.pt", "last.pt", "rank0_weights.pt", "rank1_weights.pt"]
    info0 = (out / "rank0_info.txt").read_text().split()
    info1 = (out / "rank1_info.txt").read_text().split()
    assert info0[0] == info1[0] == "2"
    assert info0[1] == info1[1] == "12"  # 3 steps x batch 4 per process
    assert info0[2] == info1[2]  # the validation Dice is reduced over both processes' crops
