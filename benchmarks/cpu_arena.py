"""MSDN_CPU_MEM_ARENA trade-off: a whole series of 64 x 512^2 int16 slices through the service's
``segment_slices`` in a fresh process per setting, arena on / off / on / off. Prints per run the median
time of 5, the RSS before, the peak over it (VmHWM after ``clear_refs``) and the RSS after ``release``.

    PYTHONPATH=. python benchmarks/cpu_arena.py
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def child(arena: bool, model: str) -> dict:
    import numpy as np

    from service.inference import segment_slices
    from service.memory import release
    from service.model import ModelRuntime

    runtime = ModelRuntime.load(model, providers=["cpu"], precision="fp32", cpu_mem_arena=arena)
    vol = np.random.default_rng(0).normal(0, 300, (64, 512, 512)).astype(np.int16)
    segment_slices(runtime, vol[:8])
    release()
    times, peaks, afters = [], [], []
    before = _rss("VmRSS")
    for _ in range(5):
        before = _rss("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")
        t0 = time.perf_counter()
        segment_slices(runtime, vol)
        times.append(time.perf_counter() - t0)
        peaks.append(_rss("VmHWM") - before)
        release()
        afters.append(_rss("VmRSS") - before)
    med = statistics.median
    return {"arena": arena, "s": med(times), "before_mib": before, "peak_mib": med(peaks), "after_mib": med(afters)}


def main() -> int:
    if len(sys.argv) == 3:
        print(json.dumps({**child(sys.argv[1] == "on", sys.argv[2]), "load": os.getloadavg()[0]}))
        return 0
    from tests.support.onnx_models import conv_model

    model = Path(tempfile.mkdtemp()) / "arena.onnx"
    conv_model(model, channels=8, layers=2, patch_size=(128, 128))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for mode in ("on", "off", "on", "off"):
        out = subprocess.run([sys.executable, __file__, mode, str(model)], capture_output=True, text=True, env=env)
        print(out.stdout.strip() or out.stderr[-2000:], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
