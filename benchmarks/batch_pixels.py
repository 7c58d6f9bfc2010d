"""ONNX Runtime time per item and memory against the batch size, for whole slices and patches.

    PYTHONPATH=. python benchmarks/batch_pixels.py                         # random 4 x 16-channel conv model
    PYTHONPATH=. python benchmarks/batch_pixels.py --threads 1 --batches 1 2 4 8 --repeats 5

What ``MSDN_BATCH_MAX_PIXELS`` trades: for each input shape (default 512x512 whole slices and
128x128 patches) and batch size, a fresh process opens the model on the CPU (arena on, as served),
runs ``--items`` items in batches of that size ``--repeats`` times, and reports the median time per
item and ONNX Runtime's memory: the resident size's peak during the runs over the level before
them (``VmHWM`` after ``/proc/self/clear_refs``; the arena keeps its high-water mark, so this is also
what the arena holds afterwards). Prints a Markdown table with the load average it ran under.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ROOT = Path(__file__).resolve().parents[1]


def _kib(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def measure(model: str, size: int, batch: int, items: int, repeats: int, threads: int) -> dict:
    """In this (fresh) process: median seconds per item and peak MiB over the level before the runs."""
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((items, 1, size, size)).astype(np.float32)
    before = _kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for start in range(0, items, batch):
            session.run(None, {"image": x[start : start + batch]})
        times.append((time.perf_counter() - t0) / items)
    return {"per_item_s": statistics.median(times), "peak_mib": (_kib("VmHWM") - before) / 1024}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="ONNX model (default: a random conv model, see --channels)")
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 128], help="square input sizes")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--items", type=int, default=16, help="items per timed run (a multiple of every batch)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, batch = (int(v) for v in args.child.split(","))
        result = measure(str(args.model), size, batch, args.items, args.repeats, args.threads)
        print(json.dumps(result))
        return 0

    if args.model is None:
        from tests.support.onnx_models import conv_model

        args.model = Path(tempfile.mkdtemp(prefix="msdn-batch-")) / "conv.onnx"
        conv_model(args.model, channels=args.channels, layers=args.layers, patch_size=(128, 128))
        name = f"random 3x3-conv model ({args.layers} layers x {args.channels} channels)"
    else:
        name = str(args.model)
    load0 = os.getloadavg()[0]
    rows = []
    for size in args.sizes:
        for batch in args.batches:
            cmd = [sys.executable, __file__, "--model", str(args.model), "--child", f"{size},{batch}"]
            cmd += ["--items", str(args.items), "--repeats", str(args.repeats), "--threads", str(args.threads)]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            out = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout
            rows.append((size, batch, json.loads(out.strip().splitlines()[-1])))
    load1 = os.getloadavg()[0]
    threads = args.threads or "ORT default"
    print(
        f"\n{name}; CPU, {os.cpu_count()} cores, intra-op threads {threads}; {args.items} items x "
        f"{args.repeats} runs per row (medians); load average {min(load0, load1):.1f}-{max(load0, load1):.1f}\n"
    )
    print("| input | batch | pixels per call | ms per item | vs batch 8 | ORT peak MiB |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for size, batch, r in rows:
        ref = next((x["per_item_s"] for s, b, x in rows if s == size and b == 8), None)
        rel = f"{r['per_item_s'] / ref:.2f}" if ref else "-"
        print(
            f"| {size}x{size} | {batch} | {batch * size * size:,} | {1000 * r['per_item_s']:.1f} | {rel} | "
            f"{r['peak_mib']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
