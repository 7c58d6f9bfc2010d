"""Benchmark of the inference service against raw ONNX Runtime, under load, and its memory.

Run from the repository root (the tests' support modules build the inputs):

    PYTHONPATH=. python benchmarks/service.py                  # a random 3x3-conv model (see --channels)
    PYTHONPATH=. python benchmarks/service.py --model m.onnx   # any model with its card, e.g. `msdn export`

A real uvicorn process serves the model (default settings, CPU); the client posts synthetic CT series
of 512 x 512 slices as DICOM files. Printed tables:

1. ``/segment`` end to end (client clock: upload, decode, inference, answer) against raw ONNX Runtime
   on the same inputs in the same batches (the same crops for box mode, the same whole slices
   otherwise), in this process with the same thread settings; medians of ``--repeats`` alternating
   runs, and their ratio (target <= 1.10). The server's own split (read / inference) is shown too.
2. Throughput and p50 / p99 latency with 1, 4 and 8 concurrent clients sending the box-mode request.
3. Peak RSS (VmHWM, the kernel's high-water mark) of a fresh server process: after start-up, after
   an 8-slice request (the model's own working memory), after one ``--rss-slices``-slice upload.

Uploads are encoded once and sent as bytes, so the client's multipart encoding is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msdn_core.onnx_model import read_card
from tests.support.dicom_series import ct_series, series_files
from tests.support.live_server import free_port, start_server, stop_server
from tests.support.onnx_models import conv_model

SIZE = 512


def volume(slices: int, seed: int = 0) -> np.ndarray:
    """(Z, 512, 512) HU: a body ellipse with noise and a few dense blobs."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    body = ((y - 256) / 230.0) ** 2 + ((x - 256) / 200.0) ** 2 < 1
    vol = np.full((slices, SIZE, SIZE), -1000.0, np.float32)
    vol[:, body] = 40.0
    for _ in range(6):
        cy, cx, r = rng.integers(150, 360), rng.integers(150, 360), rng.integers(5, 20)
        vol[:, (y - cy) ** 2 + (x - cx) ** 2 < r * r] = 300.0
    vol += rng.normal(0, 15, vol.shape).astype(np.float32)
    return np.clip(vol, -1024, 3000)


def encode(vol: np.ndarray, data: dict) -> tuple[bytes, dict]:
    """The multipart body (DICOM files of ``vol`` + form fields) and its headers, encoded once.

    Sending pre-encoded bytes keeps the client's own multipart encoding out of the timings.
    """
    files = [("dicom", (name, blob, "application/dicom")) for name, blob in series_files(ct_series(vol))]
    request = httpx.Request("POST", "http://server/segment", files=files, data=data)
    return request.read(), {"content-type": request.headers["content-type"]}


def make_boxes(slices: int, count: int, seed: int = 1) -> list[dict]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        w, h = rng.integers(16, 64, size=2)
        x1, y1 = rng.integers(100, SIZE - 100 - 64, size=2)
        out.append({"slice": int(rng.integers(0, slices)), "box": [int(x1), int(y1), int(x1 + w), int(y1 + h)]})
    return out


class RawRunner:
    """The model in this process, fed exactly what the service feeds it."""

    def __init__(self, path: Path, batch_size: int) -> None:
        options = ort.SessionOptions()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.card, _ = read_card(path)
        self.batch = batch_size

    def run(self, inputs: np.ndarray) -> float:
        t0 = time.perf_counter()
        for start in range(0, len(inputs), self.batch):
            self.session.run(None, {"image": inputs[start : start + self.batch]})
        return time.perf_counter() - t0

    def crops(self, vol: np.ndarray, boxes: list[dict]) -> np.ndarray:
        ph, pw = self.card.input.patch_size
        out = np.empty((len(boxes), 1, ph, pw), np.float32)
        for i, b in enumerate(boxes):
            x1, y1, x2, y2 = b["box"]
            window = self.card.input.crop_window([x1, y1, x2, y2], vol.shape, grow=False)
            out[i, 0] = window.extract(vol[b["slice"]], float(vol.min()))
        return self.card.input.normalise(out)

    def slices(self, vol: np.ndarray) -> np.ndarray:
        m = self.card.input.size_multiple
        h, w = -(-vol.shape[1] // m) * m, -(-vol.shape[2] // m) * m
        out = np.full((vol.shape[0], 1, h, w), vol.min(), np.float32)
        out[:, 0, : vol.shape[1], : vol.shape[2]] = vol
        return self.card.input.normalise(out)


def post(url: str, upload: tuple[bytes, dict]) -> tuple[float, dict]:
    t0 = time.perf_counter()
    r = httpx.post(f"{url}/segment", content=upload[0], headers=upload[1], timeout=1800)
    elapsed = time.perf_counter() - t0
    if r.status_code != 200:
        raise RuntimeError(f"/segment answered {r.status_code}: {r.text[:500]}")
    return elapsed, r.json()


def compare(url: str, raw: RawRunner, label: str, upload, inputs: np.ndarray, repeats: int) -> dict:
    """Medians of alternating end-to-end and raw runs."""
    e2e, ref, read_s, infer_s = [], [], [], []
    raw.run(inputs)  # warm the raw session on these shapes, as the server is warm
    for _ in range(repeats):
        seconds, body = post(url, upload)
        e2e.append(seconds)
        read_s.append(body["timing"]["read_s"])
        infer_s.append(body["timing"]["inference_s"])
        ref.append(raw.run(inputs))
    m_e2e, m_raw = statistics.median(e2e), statistics.median(ref)
    return {
        "case": label,
        "e2e": m_e2e,
        "raw": m_raw,
        "ratio": m_e2e / m_raw,
        "read": statistics.median(read_s),
        "infer": statistics.median(infer_s),
    }


def load(url: str, upload, clients: int, per_client: int) -> dict:
    """``clients`` threads each sending ``per_client`` requests back to back."""
    latencies: list[float] = []
    rejected = 0
    lock = threading.Lock()

    def worker() -> None:
        nonlocal rejected
        with httpx.Client(timeout=1800) as client:
            for _ in range(per_client):
                t0 = time.perf_counter()
                r = client.post(f"{url}/segment", content=upload[0], headers=upload[1])
                dt = time.perf_counter() - t0
                with lock:
                    if r.status_code == 200:
                        latencies.append(dt)
                    elif r.status_code == 503:
                        rejected += 1
                    else:
                        raise RuntimeError(f"/segment answered {r.status_code}: {r.text[:300]}")

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    return {
        "clients": clients,
        "ok": len(latencies),
        "rejected": rejected,
        "throughput": len(latencies) / wall,
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
    }


def vm_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def serve(model: Path, log: Path, extra_env: dict[str, str] | None = None):
    port = free_port()
    env = {"MSDN_MODEL_PATH": str(model), "MSDN_API_KEYS": "", **(extra_env or {})}
    args = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port)]
    args += ["--log-level", "warning"]
    return start_server(args, env, port, log), f"http://127.0.0.1:{port}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="ONNX model with its card (default: a random conv model)")
    parser.add_argument("--channels", type=int, default=16, help="width of the default conv model")
    parser.add_argument("--layers", type=int, default=4, help="3x3 conv layers of the default conv model")
    parser.add_argument("--slices", type=int, default=64, help="slices of the whole-series case")
    parser.add_argument("--boxes", type=int, default=20, help="boxes of the box-mode case")
    parser.add_argument("--repeats", type=int, default=5, help="runs per median")
    parser.add_argument("--load-requests", type=int, default=4, help="requests per client in the load test")
    parser.add_argument("--rss-slices", type=int, default=300, help="slices of the memory case (0 skips it)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["compare", "load", "rss"])
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="msdn-bench-"))
    if args.model is None:
        args.model = work / "conv.onnx"
        conv_model(args.model, channels=args.channels, layers=args.layers, patch_size=(128, 128))
        model_name = f"random 3x3-conv model ({args.layers} layers x {args.channels} channels, mask = HU > 200)"
    else:
        model_name = str(args.model)
    batch = int(os.environ.get("MSDN_BATCH_SIZE", "8"))
    raw = RawRunner(args.model, batch)
    print(f"model: {model_name}; patch {raw.card.input.patch_size}; CPU, {os.cpu_count()} cores; batch {batch}")

    vol = volume(args.slices)
    boxes = make_boxes(args.slices, args.boxes)
    box_upload = encode(vol, {"boxes": json.dumps(boxes)})
    slices_upload = encode(vol, {"mode": "slices"})
    print(f"upload: {args.slices} DICOM files, {len(box_upload[0]) / 2**20:.1f} MiB")

    if "compare" not in args.skip or "load" not in args.skip:
        proc, url = serve(args.model, work / "server.log")
        try:
            post(url, box_upload)  # first request: warm caches
            if "compare" not in args.skip:
                box_case = f"boxes: {args.boxes} boxes, {args.slices}x512x512 upload"
                rows = [
                    compare(url, raw, box_case, box_upload, raw.crops(vol, boxes), args.repeats),
                    compare(
                        url,
                        raw,
                        f"slices: {args.slices}x512x512",
                        slices_upload,
                        raw.slices(vol),
                        args.repeats,
                    ),
                ]
                print(f"\n/segment vs raw ONNX Runtime (median of {args.repeats})\n")
                print("| case | end-to-end s | raw ORT s | ratio | server read s | server inference s |")
                print("| --- | ---: | ---: | ---: | ---: | ---: |")
                for r in rows:
                    print(
                        f"| {r['case']} | {r['e2e']:.3f} | {r['raw']:.3f} | {r['ratio']:.2f} | "
                        f"{r['read']:.3f} | {r['infer']:.3f} |"
                    )
            if "load" not in args.skip:
                print(
                    f"\nconcurrent clients, box-mode request ({args.boxes} boxes, {args.slices}x512x512 upload), "
                    f"{args.load_requests} requests per client\n"
                )
                print("| clients | ok | 503 | throughput req/s | p50 s | p99 s |")
                print("| ---: | ---: | ---: | ---: | ---: | ---: |")
                for clients in (1, 4, 8):
                    r = load(url, box_upload, clients, args.load_requests)
                    print(
                        f"| {r['clients']} | {r['ok']} | {r['rejected']} | {r['throughput']:.2f} | "
                        f"{r['p50']:.3f} | {r['p99']:.3f} |"
                    )
        finally:
            stop_server(proc)

    if args.rss_slices and "rss" not in args.skip:
        del box_upload, slices_upload
        small = encode(vol[:8], {"mode": "slices"})
        big = encode(volume(args.rss_slices, seed=5), {"mode": "slices"})
        proc, url = serve(args.model, work / "server-rss.log")
        try:
            started = vm_kib(proc.pid, "VmHWM")
            post(url, small)  # the model's own working memory (8-slice batch of 512 x 512)
            model_peak = vm_kib(proc.pid, "VmHWM")
            seconds, body = post(url, big)
            peak = vm_kib(proc.pid, "VmHWM")
        finally:
            stop_server(proc)
        print(
            f"\nmemory: one {args.rss_slices}x512x512 upload ({len(big[0]) / 2**20:.0f} MiB of DICOM), "
            "whole slices, fresh server\n"
        )
        print(
            "| after start-up MiB | after an 8-slice request MiB | after the big request MiB | "
            "request s | server read s | server inference s |"
        )
        print("| ---: | ---: | ---: | ---: | ---: | ---: |")
        print(
            f"| {started / 1024:.0f} | {model_peak / 1024:.0f} | {peak / 1024:.0f} | {seconds:.1f} | "
            f"{body['timing']['read_s']:.2f} | {body['timing']['inference_s']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
