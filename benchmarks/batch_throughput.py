"""Batch throughput of ``msdn segment``: studies per minute with 1 and 2 worker processes.

    PYTHONPATH=. python benchmarks/batch_throughput.py                 # 6 copies of the sample, 3 runs
    PYTHONPATH=. python benchmarks/batch_throughput.py --studies 12 --workers 1 2 4 --runs 5

Each run is the whole command as a user starts it (a fresh ``python -m model_export.cli segment``
process: imports, model load in every worker, reading, inference, SEG + JSON writing, summary.csv)
on ``--studies`` copies of ``samples/chest_case`` (20 slices of 128 x 128) into a fresh output folder,
with the default model. studies/min is the number of studies over the median wall time. The load
average (1 min) before and after each configuration is printed with the table: on a shared machine
it moves the numbers.

Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(studies: Path, out: Path, *, workers: int, model: Path, threads: int) -> float:
    args = [sys.executable, "-m", "model_export.cli", "segment", str(studies), "-o", str(out)]
    args += ["--model", str(model), "--workers", str(workers), "--threads", str(threads), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"msdn segment failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=6, help="copies of the sample series")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads per worker")
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default.onnx")
    args = parser.parse_args(argv)
    if args.studies < 1 or args.runs < 1 or min(args.workers) < 1:
        parser.error("--studies, --runs and --workers must be >= 1")
    rows = []
    with tempfile.TemporaryDirectory(prefix="msdn-batch-bench-") as tmp:
        studies = Path(tmp) / "studies"
        for i in range(args.studies):
            shutil.copytree(ROOT / "samples" / "chest_case", studies / f"study_{i:03d}")
        for workers in args.workers:
            load_before = os.getloadavg()[0]
            times = [
                run_once(
                    studies, Path(tmp) / f"out_{workers}_{r}", workers=workers, model=args.model, threads=args.threads
                )
                for r in range(args.runs)
            ]
            median = statistics.median(times)
            rows.append(
                (workers, median, min(times), max(times), args.studies / median * 60, load_before, os.getloadavg()[0])
            )
    print(
        f"`msdn segment` on {args.studies} studies (samples/chest_case, 40 x 256 x 256), {args.runs} runs, "
        f"{args.threads} ONNX Runtime thread(s) per worker, {os.cpu_count()} CPUs\n"
    )
    print("| workers | median s | min s | max s | studies/min | load before | load after |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for w, med, lo, hi, rate, lb, la in rows:
        print(f"| {w} | {med:.1f} | {lo:.1f} | {hi:.1f} | {rate:.1f} | {lb:.1f} | {la:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
