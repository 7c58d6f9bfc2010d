"""Training throughput on this machine: samples per second of a full optimisation step.

For each preset and model: forward, loss (Dice + detection where the model has a Detection Unit),
backward and Adam step on mini-batches of 4 patches, half of them strong (mask) and half weak (boxes),
as ``msdn train`` runs them (segmentation-only models get the strong half only, as in training, and
are reported per sample they actually see). Median of several timed repeats after a warm-up.
Also measured: the patch sampler alone (``PatchDataset`` items per second, to show data preparation is
not the bottleneck) and, with ``--threads-compare``, one 2-thread run against two 1-thread runs side
by side (total samples per second).

    PYTHONPATH=. python benchmarks/train_throughput.py                     # paper and small presets
    PYTHONPATH=. python benchmarks/train_throughput.py --presets small --patch 64 --base-channels 8
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_export.nets import MODEL_NAMES, build_model
from model_export.training.step import batch_loss


def make_batch(batch: int, patch: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    label = torch.zeros(batch, patch, patch, dtype=torch.long)
    c, r = patch // 2, max(patch // 10, 2)
    label[:, c - r : c + r, c - r : c + r] = 1
    box = torch.tensor([[c - r, c - r, c + r, c + r]], dtype=torch.float32)
    return {
        "image": torch.randn(batch, 1, patch, patch, generator=g),
        "label": label,
        "strong": torch.tensor([i % 2 == 0 for i in range(batch)]),
        "targets": [{"boxes": box, "labels": torch.tensor([1])} for _ in range(batch)],
    }


def step_throughput(
    name: str, preset: str, patch: int, batch: int, steps: int, repeats: int, overrides: dict
) -> tuple[float, float]:
    """(median samples/s, median ms per step)."""
    torch.manual_seed(0)
    model = build_model(name, preset=preset, **overrides).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    data = make_batch(batch, patch)
    seen = batch if model.has_detection else int(data["strong"].sum())

    def one():
        losses = batch_loss(model, model, data, torch.device("cpu"))
        opt.zero_grad(set_to_none=True)
        losses["total"].backward()
        opt.step()

    one()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(steps):
            one()
        times.append((time.perf_counter() - t) / steps)
    ms = statistics.median(times)
    return seen / ms, 1000 * ms


def sampler_throughput(patch: int, n: int = 400) -> float:
    from model_export.data.manifest import load_manifest
    from model_export.data.sampling import Normalization, PatchDataset
    from tests.model_export.tiny_data import write_tiny_dataset

    with tempfile.TemporaryDirectory() as tmp:
        m = load_manifest(write_tiny_dataset(Path(tmp), strong=4, weak=4, val=1, test=1, shape=(16, 192, 192)))
        ds = PatchDataset(m.split("train"), normalization=Normalization(-800, 300), patch_size=patch)
        t = time.perf_counter()
        for i in range(n):
            ds.set_epoch(i // len(ds))
            ds[i % len(ds)]
        return n / (time.perf_counter() - t)


def _worker(args) -> float:
    name, preset, patch, batch, steps, overrides, threads, start = args
    torch.set_num_threads(threads)
    while time.time() < start:
        time.sleep(0.01)
    sps, _ = step_throughput(name, preset, patch, batch, steps, 1, overrides)
    return sps


def threads_compare(name: str, preset: str, patch: int, batch: int, steps: int, overrides: dict) -> tuple[float, float]:
    """(samples/s of one 2-thread process, total samples/s of two 1-thread processes)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(1) as pool:
        one = pool.map(_worker, [(name, preset, patch, batch, steps, overrides, 2, time.time() + 3)])[0]
    with ctx.Pool(2) as pool:
        start = time.time() + 5
        two = pool.map(_worker, [(name, preset, patch, batch, steps, overrides, 1, start)] * 2)
    return one, sum(two)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["paper", "small"])
    p.add_argument("--models", nargs="+", default=list(MODEL_NAMES))
    p.add_argument("--patch", type=int, default=128)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--base-channels", type=int, default=None)
    p.add_argument("--head-channels", type=int, default=None)
    p.add_argument("--threads-compare", action="store_true")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: v for k, v in (("base_channels", args.base_channels), ("head_channels", args.head_channels)) if v}
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, patch {args.patch}, batch {args.batch}, "
        f"overrides {overrides or 'none'}; median of {args.repeats} x {args.steps} steps"
    )
    print(f"{'preset':8} {'model':11} {'params':>10} {'ms/step':>9} {'samples/s':>10}")
    for preset in args.presets:
        for name in args.models:
            params = sum(p.numel() for p in build_model(name, preset=preset, **overrides).parameters())
            sps, ms = step_throughput(name, preset, args.patch, args.batch, args.steps, args.repeats, overrides)
            print(f"{preset:8} {name:11} {params:>10,} {ms:>9.1f} {sps:>10.2f}", flush=True)
    print(f"patch sampler: {sampler_throughput(args.patch):.0f} items/s (one process)")
    if args.threads_compare:
        for name in ("unet", "msdn"):
            one, two = threads_compare(name, args.presets[-1], args.patch, args.batch, args.steps * 4, overrides)
            print(
                f"{name} ({args.presets[-1]}): 1 process x 2 threads {one:.1f} samples/s; "
                f"2 processes x 1 thread {two:.1f} samples/s total (ratio {two / one:.2f})"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
