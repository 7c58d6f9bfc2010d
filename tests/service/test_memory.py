"""service.memory: glibc's mmap threshold fixed at start-up, and the trim after a request."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from service import memory
from service.memory import MAX_MMAP_THRESHOLD, fix_mmap_threshold

#: In a fresh process: free a mapped 8 MiB block (glibc's dynamic threshold rises to 8 MiB), then
#: allocate 64 x 1 MiB interleaved with small survivors and free the large ones; prints the MiB of
#: resident size given back.
PROBE = """
import sys
import numpy as np
from service.memory import fix_mmap_threshold
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
if sys.argv[1] != "0":
    assert fix_mmap_threshold(int(sys.argv[1]))
big = np.ones(8 << 20, np.uint8); del big
keep, bufs = [], []
for _ in range(64):
    bufs.append(np.ones(1 << 20, np.uint8))
    keep.append(np.ones(1000, np.uint8))
before = rss(); del bufs
print(before - rss())
"""


def _given_back(threshold: int) -> float:
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    out = subprocess.run([sys.executable, "-c", PROBE, str(threshold)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return float(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc and /proc")
def test_a_fixed_threshold_gives_freed_blocks_back_at_once():
    assert _given_back(128 * 1024) > 60  # the 64 MiB left the resident size when freed
    assert _given_back(0) < 8  # glibc's dynamic threshold: they stayed on the heap


def test_threshold_values():
    assert fix_mmap_threshold(0) is False  # 0: glibc's own
    for bad in (-1, MAX_MMAP_THRESHOLD + 1):
        with pytest.raises(ValueError, match="nbytes"):
            fix_mmap_threshold(bad)


def test_the_app_fixes_the_threshold_at_start_up(make_client, model_1c, monkeypatch):
    monkeypatch.setattr(memory, "fixed_mmap_threshold", None)
    make_client(model_1c, malloc_mmap_threshold=256 * 1024)
    assert memory.fixed_mmap_threshold == 256 * 1024
