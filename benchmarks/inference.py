"""Inference speed of the exported segmentation path: PyTorch eager vs ONNX Runtime fp32 / int8 (CPU),
or PyTorch eager vs ONNX Runtime CUDA fp32 / fp16 (IO binding) vs TensorRT fp16 (``--device cuda``).

    PYTHONPATH=. python benchmarks/inference.py                    # paper and small presets, CPU
    PYTHONPATH=. python benchmarks/inference.py --preset small --runs 20
    PYTHONPATH=. python benchmarks/inference.py --device cuda --preset paper   # on a GPU machine

For each preset a randomly initialised model is exported with ``export_model`` (parity-checked) and
quantised with ``make_int8`` (CPU) or converted with ``make_fp16`` (CUDA). Weights do not change the
speed, so the int8 calibration here uses random normal patches (``msdn export`` never does: it needs
real patches). Cases: 128x128 at batch 1 and 8, 512x512 at batch 1 (and at batch 32 on CUDA). Each
timing is the median of ``--runs`` runs after ``--warmup`` runs. GFLOP counts the convolutions'
multiply-adds (x2) of one forward pass at that shape (other ops are < 1%); GFLOP/s is that over the
median time. On the CPU "vs peak" divides it by the machine's limit measured just before the case's
rows with the same thread count (``benchmarks/cpu_peak.py``: an fp32 FMA micro-kernel for the fp32
rows, the int8 dot-product kernel, VNNI where the CPU has it, for the int8 rows); each row gives the
1-minute load average over its timing and is marked BUSY when other work competes for the cores
(``--refuse-busy`` leaves such rows out). On CUDA "vs matmul" divides the rate by a 2048x2048 fp32
matrix product (fp16 for the fp16 rows) timed just before the case's rows, in the same process, and
"vs fp16 peak" divides the rate by the GPU's dense fp16 tensor-core peak (``--peak-tflops``, else
looked up from the GPU's name in ``FP16_DENSE_PEAK_TFLOPS``). TensorRT rows build one engine per case
(static profile, cached in ``--trt-cache``); a TensorRT provider that cannot load gives a row saying why.

Prints a Markdown table (and writes it to ``--output``).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import cpu_peak
from model_export.checkpoint import load_checkpoint, save_checkpoint
from model_export.export import export_model
from model_export.export.calibration import PatchSet
from model_export.export.variants import make_fp16, make_int8
from model_export.nets import build_model

CASES = [(1, 128, 128), (8, 128, 128), (1, 512, 512)]
CUDA_CASES = [*CASES, (32, 512, 512)]
#: Dense (no sparsity) fp16 tensor-core peak, TFLOP/s, by a substring of torch.cuda.get_device_name().
FP16_DENSE_PEAK_TFLOPS = {
    "H200": 989.4,
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,
    "A100": 312.0,
    "L40S": 362.1,
    "L4": 121.0,
    "A10": 125.0,
    "T4": 65.0,
}


def median_ms(fn: Callable[[], object], runs: int, warmup: int, sync: Callable[[], None] = lambda: None) -> float:
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(times)


def conv_gflop(model: torch.nn.Module, shape: tuple[int, ...], device: str) -> float:
    """2 x multiply-adds of every Conv2d in one forward pass of ``model.segment`` at ``shape``."""
    total = 0

    def hook(module: torch.nn.Conv2d, _inp, out):
        nonlocal total
        k = module.in_channels // module.groups * module.kernel_size[0] * module.kernel_size[1]
        total += 2 * out.numel() * k

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.inference_mode():
        model.segment(torch.zeros(shape, device=device))
    for h in handles:
        h.remove()
    return total / 1e9


def matmul_gflops(device: str, dtype: torch.dtype = torch.float32, n: int = 2048, runs: int = 5) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    ms = median_ms(lambda: torch.mm(a, b), runs, 2, sync)
    return 2 * n**3 / (ms / 1000) / 1e9


def cpu_rows(model, paths, shape, runs, warmup, threads):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    xt = torch.from_numpy(x)
    rows = []
    with torch.inference_mode():
        rows.append(("PyTorch eager fp32", median_ms(lambda: model.segment(xt), runs, warmup), "fp32"))
    for label, key in (("ORT CPU fp32", "fp32"), ("ORT CPU int8 QDQ", "int8")):
        session = ort.InferenceSession(str(paths[key]), opts, providers=["CPUExecutionProvider"])
        rows.append((label, median_ms(lambda s=session: s.run(None, {"image": x}), runs, warmup), key))
    return rows


def cuda_rows(model, paths, shape, runs, warmup, trt_cache=None):
    import onnxruntime as ort

    x = np.random.default_rng(0).standard_normal(shape, dtype=np.float32)
    xt = torch.from_numpy(x).cuda()
    rows = []
    with torch.inference_mode():
        rows.append(
            (
                "PyTorch eager fp32 (CUDA)",
                median_ms(lambda: model.segment(xt), runs, warmup, torch.cuda.synchronize),
                "fp32",
            )
        )
        with torch.autocast("cuda", dtype=torch.float16):
            rows.append(
                (
                    "PyTorch eager autocast fp16 (CUDA)",
                    median_ms(lambda: model.segment(xt), runs, warmup, torch.cuda.synchronize),
                    "fp16",
                )
            )
    for label, key in (("ORT CUDA EP fp32, IO binding", "fp32"), ("ORT CUDA EP fp16, IO binding", "fp16")):
        session = ort.InferenceSession(str(paths[key]), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        if session.get_providers()[0] != "CUDAExecutionProvider":
            raise RuntimeError(f"CUDA EP not available: {session.get_providers()}")
        x_dev = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
        binding = session.io_binding()
        binding.bind_ortvalue_input("image", x_dev)
        binding.bind_output("probabilities", "cuda", 0)

        def run(session=session, binding=binding):
            session.run_with_iobinding(binding)

        rows.append((label, median_ms(run, runs, warmup, binding.synchronize_outputs), key))
    if trt_cache is not None:
        rows.append(tensorrt_row(paths["fp32"], x, runs, warmup, trt_cache))
    return rows


def tensorrt_row(path, x, runs, warmup, cache):
    """ORT TensorRT EP, fp16 engines, a static profile at ``x.shape``, IO binding; or why it cannot run."""
    import onnxruntime as ort

    from service.providers import tensorrt_unavailable_reason

    label = "ORT TensorRT EP fp16, IO binding"
    reason = tensorrt_unavailable_reason()
    if reason is not None:
        return (f"{label}: not run ({reason[:120]})", float("nan"), "fp16")
    shape = "image:" + "x".join(str(d) for d in x.shape)
    options = {
        "trt_fp16_enable": True,
        "trt_engine_cache_enable": True,
        "trt_engine_cache_path": str(cache),
        "trt_timing_cache_enable": True,
        "trt_timing_cache_path": str(cache),
        "trt_profile_min_shapes": shape,
        "trt_profile_opt_shapes": shape,
        "trt_profile_max_shapes": shape,
        "trt_builder_optimization_level": 3,
    }
    session = ort.InferenceSession(
        str(path), providers=[("TensorrtExecutionProvider", options), "CUDAExecutionProvider"]
    )
    if session.get_providers()[0] != "TensorrtExecutionProvider":
        return (f"{label}: not run (session providers {session.get_providers()})", float("nan"), "fp16")
    binding = session.io_binding()
    binding.bind_ortvalue_input("image", ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0))
    binding.bind_output("probabilities", "cuda", 0)
    return (
        label,
        median_ms(lambda: session.run_with_iobinding(binding), runs, warmup, binding.synchronize_outputs),
        "fp16",
    )


def fp16_peak_tflops(explicit: float | None) -> tuple[float | None, str]:
    """The GPU's dense fp16 peak (TFLOP/s) and its name."""
    name = torch.cuda.get_device_name()
    if explicit:
        return explicit, name
    for key, peak in FP16_DENSE_PEAK_TFLOPS.items():
        if key in name:
            return peak, name
    return None, name


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", nargs="+", default=["paper", "small"], choices=["paper", "small"])
    parser.add_argument("--model", default="msdn")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0: library default)")
    parser.add_argument(
        "--cases",
        nargs="+",
        default=None,
        help="BxHxW cases (default 1x128x128 8x128x128 1x512x512, +32x512x512 on CUDA)",
    )
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's dense fp16 peak (CUDA)")
    parser.add_argument("--no-tensorrt", action="store_true", help="skip the TensorRT rows (CUDA)")
    parser.add_argument("--trt-cache", default=None, help="TensorRT engine cache folder (default: a temp folder)")
    parser.add_argument("--output", default=None, help="also write the Markdown table here")
    parser.add_argument(
        "--refuse-busy", action="store_true", help="leave out rows timed while other work loads the CPU (else marked)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.runs < 10:
        parser.error("--runs must be >= 10")
    default_cases = CUDA_CASES if args.device == "cuda" else CASES
    cases = default_cases if not args.cases else [tuple(int(v) for v in c.split("x")) for c in args.cases]
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, cpu count {os.cpu_count()}, device {device}")
    peak = None
    header = "| preset | model | input BxHxW | backend | median ms | ms / patch | GFLOP | GFLOP/s | matmul GFLOP/s | vs matmul |"  # noqa: E501
    if device == "cpu":
        header = "| preset | model | input BxHxW | backend | median ms | ms / patch | GFLOP | GFLOP/s | peak G(FL)OP/s | vs peak | load | busy |"  # noqa: E501
        peak_threads = args.threads or os.cpu_count() or 1
        for kind in ("fp32", "int8"):
            print(f"{kind} peak reference: {cpu_peak.measure(kind, threads=peak_threads).how}")
    if device == "cuda":
        peak, gpu = fp16_peak_tflops(args.peak_tflops)
        print(f"GPU {gpu}, dense fp16 peak {peak or 'unknown (--peak-tflops)'} TFLOP/s")
        header += " TFLOP/s | vs fp16 peak |"
    lines = [header, "|" + " --- |" * (header.count("|") - 1)]
    with tempfile.TemporaryDirectory(prefix="msdn-bench-") as tmp:
        trt_cache = None
        if device == "cuda" and not args.no_tensorrt:
            trt_cache = Path(args.trt_cache or Path(tmp) / "trt")
            trt_cache.mkdir(parents=True, exist_ok=True)
        for preset in args.preset:
            torch.manual_seed(0)
            ckpt = save_checkpoint(
                Path(tmp) / f"{preset}.pt", build_model(args.model, preset=preset), patch_size=(128, 128)
            )
            model, card, _ = load_checkpoint(ckpt)
            paths = {"fp32": export_model(model, Path(tmp) / f"{preset}.onnx", card=card).path}
            if device == "cpu":
                calib = PatchSet(
                    np.random.default_rng(1).standard_normal((16, 1, 128, 128), dtype=np.float32), None, "random"
                )
                paths["int8"] = make_int8(paths["fp32"], calib)
            else:
                paths["fp16"] = make_fp16(paths["fp32"])
                model = model.cuda()
            for b, h, w in cases:
                shape = (b, model.config.in_channels, h, w)
                gflop = conv_gflop(model, shape, device)
                if device == "cpu":
                    peaks = {k: cpu_peak.measure(k, threads=peak_threads).gops for k in ("fp32", "int8")}
                    load = cpu_peak.load_average()
                    rows = cpu_rows(model, paths, shape, args.runs, args.warmup, args.threads)
                    load = max(load, cpu_peak.load_average())
                    is_busy = cpu_peak.busy(peak_threads, load)
                    for label, ms, kind in rows:
                        rate = gflop / (ms / 1000)
                        ref = peaks["int8" if kind == "int8" else "fp32"]
                        if is_busy and args.refuse_busy:
                            line = f"| {preset} | {args.model} | {b}x{h}x{w} | {label} | refused: load {load:.1f} |"
                        else:
                            line = (
                                f"| {preset} | {args.model} | {b}x{h}x{w} | {label} | {ms:.2f} | {ms / b:.3f} "
                                f"| {gflop:.2f} | {rate:.1f} | {ref:.1f} | {rate / ref:.2f} | {load:.1f} "
                                f"| {'BUSY' if is_busy else 'no'} |"
                            )
                        lines.append(line)
                        print(line, flush=True)
                    continue
                mm32 = matmul_gflops(device)
                mm16 = matmul_gflops(device, torch.float16) if device == "cuda" else None
                rows = (
                    cpu_rows(model, paths, shape, args.runs, args.warmup, args.threads)
                    if device == "cpu"
                    else cuda_rows(model, paths, shape, args.runs, args.warmup, trt_cache)
                )
                for label, ms, kind in rows:
                    rate = gflop / (ms / 1000)
                    ref = mm16 if kind == "fp16" and mm16 else mm32
                    line = (
                        f"| {preset} | {args.model} | {b}x{h}x{w} | {label} | {ms:.2f} | {ms / b:.3f} "
                        f"| {gflop:.2f} | {rate:.1f} | {ref:.1f} | {rate / ref:.2f} |"
                    )
                    if device == "cuda":
                        vs_peak = f"{rate / 1000 / peak:.2f}" if peak else "-"
                        line += f" {rate / 1000:.1f} | {vs_peak} |"
                    lines.append(line)
                    print(line, flush=True)
    print()
    print("\n".join(lines))
    if args.output:
        Path(args.output).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
