"""Model cost table: parameters, GFLOPs (128x128 and 512x512) and CPU forward+backward time.

Usage::

    python benchmarks/model_cost.py [--repeats 5] [--batch 4] [--presets small paper] [--models ...]

GFLOPs count multiply-adds as 2 FLOPs (``torch.utils.flop_counter``) for one image through the
full training forward (both nets and the detection unit where present) and separately through the
segmentation path (what is exported and served). Time is the median of ``--repeats`` forward+backward
passes of a batch at 128x128 (all rows segmented, detection targets given), after one warm-up.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from model_export.nets import MODEL_NAMES, build_model


def gflops(fn, *args) -> float:
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops() / 1e9


def count(model, size: int) -> tuple[float, float]:
    meta = build_model(model.config.name, **{k: v for k, v in model.config.to_dict().items() if k != "name"})
    meta = meta.to("meta").eval()
    x = torch.empty(1, meta.config.in_channels, size, size, device="meta")
    with torch.no_grad():
        return gflops(meta, x), gflops(meta.segment, x)


def segmentation_path_params(model) -> int:
    """Parameters the exported segmentation path uses: those reached by its gradient."""
    model.eval().zero_grad(set_to_none=True)
    model.segment(torch.randn(1, model.config.in_channels, 32, 32)).sum().backward()
    used = sum(p.numel() for p in model.parameters() if p.grad is not None)
    model.zero_grad(set_to_none=True)
    return used


def step_time(model, batch: int, repeats: int) -> float:
    model.train()
    x = torch.randn(batch, model.config.in_channels, 128, 128)
    labels = torch.zeros(batch, 128, 128, dtype=torch.long)
    labels[:, 40:80, 50:90] = 1
    targets = [{"boxes": torch.tensor([[50.0, 40.0, 90.0, 80.0]]), "labels": torch.tensor([1])}] * batch
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        out = model(x)
        model.loss(out, labels=labels, targets=targets)["total"].backward()
        model.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["small", "paper"])
    parser.add_argument("--models", nargs="+", default=list(MODEL_NAMES))
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    rows = []
    for preset in args.presets:
        for name in args.models:
            model = build_model(name, preset=preset)
            params = sum(p.numel() for p in model.parameters())
            seg_params = segmentation_path_params(model)
            f128, s128 = count(model, 128)
            f512, s512 = count(model, 512)
            t = step_time(model, args.batch, args.repeats)
            rows.append((preset, name, params, seg_params, f128, s128, f512, s512, t))
            print(f"# done {preset} {name}", flush=True)
    threads = torch.get_num_threads()
    print(f"\nCPU, torch {torch.__version__}, {threads} threads, batch {args.batch}, median of {args.repeats}\n")
    print(
        "| preset | model | params | seg-path params | GFLOPs 128² (train fwd) | GFLOPs 128² (seg path) "
        "| GFLOPs 512² (train fwd) | GFLOPs 512² (seg path) | fwd+bwd s / batch 128² |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for preset, name, p, sp, f128, s128, f512, s512, t in rows:
        print(
            f"| {preset} | {name} | {p / 1e6:.2f} M | {sp / 1e6:.2f} M | {f128:.2f} | {s128:.2f} "
            f"| {f512:.1f} | {s512:.1f} | {t:.2f} |"
        )


if __name__ == "__main__":
    main()
