"""Benchmark of the inference service against raw ONNX Runtime, its memory, and under load.

Run from the repository root (the tests' support modules build the inputs):

    PYTHONPATH=. python benchmarks/service.py                  # a random 3x3-conv model (see --channels)
    PYTHONPATH=. python benchmarks/service.py --model m.onnx   # any model with its card (and m.int8.onnx)
    PYTHONPATH=. python benchmarks/service.py --baseline /tmp/main-tree   # + the same cases on another tree

A real uvicorn process serves the model on the CPU, once per precision (fp32, and int8 from the
model's ``<name>.int8.onnx``, made here for the default conv model); the client posts synthetic CT
series of 512 x 512 slices as DICOM files. Printed, side by side from one run:

1. Per case (box mode: ``--boxes`` boxes on a ``--slices``-slice series; whole series of ``--slices``
   and ``--big-slices`` slices) and precision: ``/segment`` end to end (client clock: upload,
   decode, inference, answer) against raw ONNX Runtime on the same inputs in the same batches (the
   same crops for box mode, the same whole slices otherwise), in this process with the same thread
   settings, and against the server's own inference time; slices/s; medians of ``--repeats``
   alternating runs. Targets: box mode <= 1.10, whole series <= 1.05.
2. Memory of the same requests (medians): the server's resident size before each request, its peak
   during it over that level (``VmHWM`` after ``/proc/PID/clear_refs``), and the resident size after
   the answer over that level; the idle footprint after start-up and after the first request.
3. Optionally (``--load``) throughput and p50 / p99 latency with 1, 4 and 8 concurrent clients.

With ``--baseline TREE`` the fp32 server also runs from another source tree (e.g. ``git archive main``
unpacked) in the same run, so before/after are compared under the same machine load. It gets the
same settings as this tree's first server (its ``MSDN_BATCH_MAX_PIXELS``, spinning off); with
``--baseline-legacy`` it gets none of the session-4 settings (no pixel budget, spinning ONNX Runtime
threads), as a tree from before them ran. Every table
says the load average it ran under (the machine may be shared: compare ratios, not seconds).
Uploads are encoded once and sent as bytes, so the client's multipart encoding is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Optional

import httpx
import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from msdn_core.onnx_model import read_card
from tests.support.dicom_series import ct_series, series_files
from tests.support.live_server import ROOT, free_port, stop_server
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
    """The model in this process, fed exactly what the service feeds it, in the service's batches
    (``batch_size`` items, fewer where ``max_pixels`` cuts them: the rule of ``ModelRuntime.batch_for``)."""

    def __init__(
        self, path: Path, batch_size: int, *, max_pixels: int = 0, threads: int = 0, spinning: bool = False
    ) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        # as the server (MSDN_INTRA_OP_SPINNING, off by default)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.card, _ = read_card(path)
        self.batch = batch_size
        self.max_pixels = max_pixels

    def batch_for(self, inputs: np.ndarray) -> int:
        pixels = inputs.shape[2] * inputs.shape[3]
        return max(1, min(self.batch, self.max_pixels // pixels)) if self.max_pixels else self.batch

    def run(self, inputs: np.ndarray) -> float:
        batch = self.batch_for(inputs)
        t0 = time.perf_counter()
        for start in range(0, len(inputs), batch):
            self.session.run(None, {"image": inputs[start : start + batch]})
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


def floor(url: str, upload: tuple[bytes, dict], repeats: int) -> dict[str, float]:
    """Median seconds of posting ``upload`` to the ingest floor app's ``/read``, ``/form`` and ``/spool``
    (``benchmarks/ingest_floor.py``), the three alternating."""
    times: dict[str, list[float]] = {"read": [], "form": [], "spool": []}
    with httpx.Client(timeout=600) as client:
        for _ in range(repeats + 1):  # the first round warms up
            for endpoint, seconds in times.items():
                t0 = time.perf_counter()
                r = client.post(f"{url}/{endpoint}", content=upload[0], headers=upload[1])
                seconds.append(time.perf_counter() - t0)
                if r.status_code != 200:
                    raise RuntimeError(f"/{endpoint} answered {r.status_code}: {r.text[:300]}")
    return {k: statistics.median(v[1:]) for k, v in times.items()}


def vm_kib(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS (Linux ``clear_refs`` 5); False when not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def settled_rss(pid: int, wait_s: float = 2.0) -> int:
    """VmRSS (KiB) once the answer's background release has run (stable for 0.2 s, at most ``wait_s``)."""
    deadline = time.monotonic() + wait_s
    last = vm_kib(pid, "VmRSS")
    while time.monotonic() < deadline:
        time.sleep(0.2)
        now = vm_kib(pid, "VmRSS")
        if abs(now - last) < 1024:
            return now
        last = now
    return last


def compare(proc, url: str, raw: RawRunner, upload, inputs: np.ndarray, repeats: int) -> dict:
    """Medians of alternating end-to-end and raw runs, with the server's memory around each request."""
    e2e, ref, infer, read, pre, peak, after = [], [], [], [], [], [], []
    raw.run(inputs)  # warm the raw session on these shapes, as the server is warm
    for _ in range(repeats):
        before = settled_rss(proc.pid)
        exact = reset_peak(proc.pid)
        seconds, body = post(url, upload)
        high = vm_kib(proc.pid, "VmHWM") if exact else float("nan")
        rest = settled_rss(proc.pid)
        e2e.append(seconds)
        infer.append(body["timing"]["inference_s"])
        read.append(body["timing"]["read_s"])
        pre.append(before)
        peak.append(high - before)
        after.append(rest - before)
        ref.append(raw.run(inputs))
    med = statistics.median
    return {
        "e2e": med(e2e),
        "raw": med(ref),
        "infer": med(infer),
        "read": med(read),
        "pre_mib": med(pre) / 1024,
        "peak_mib": med(peak) / 1024,
        "after_mib": med(after) / 1024,
        "after_pct": 100.0 * med(after) / med(pre),
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


def serve(
    root: Path, model: Path, log: Path, extra_env: dict[str, str] | None = None, *, app: str = "service.main:app"
):
    """A uvicorn server of ``root``'s code (``root`` first on PYTHONPATH, run from there)."""
    port = free_port()
    env = {
        **os.environ,
        "MSDN_MODEL_PATH": str(model),
        "MSDN_API_KEYS": "",
        "MSDN_PROVIDERS": "CPUExecutionProvider",
        **(extra_env or {}),
        "PYTHONPATH": str(root),
    }
    args = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port)]
    args += ["--log-level", "warning"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError(f"server not ready in time:\n{log.read_text()}")


def int8_of(model: Path, generated: bool) -> Optional[Path]:
    """``<model>.int8.onnx``: made here (random calibration: speed only) for the generated model."""
    path = model.with_name(f"{model.stem}.int8.onnx")
    if path.is_file() or not generated:
        return path if path.is_file() else None
    from model_export.export.calibration import PatchSet
    from model_export.export.variants import make_int8

    card, _ = read_card(model)
    ph, pw = card.input.patch_size
    rng = np.random.default_rng(3)
    return make_int8(model, PatchSet(rng.standard_normal((16, 1, ph, pw)).astype(np.float32), None, "random"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="ONNX model with its card (default: a random conv model)")
    parser.add_argument("--channels", type=int, default=16, help="width of the default conv model")
    parser.add_argument("--layers", type=int, default=4, help="3x3 conv layers of the default conv model")
    parser.add_argument("--slices", type=int, default=64, help="slices of the box-mode and first whole-series case")
    parser.add_argument("--big-slices", type=int, default=300, help="slices of the large whole-series case (0: skip)")
    parser.add_argument("--boxes", type=int, default=20, help="boxes of the box-mode case")
    parser.add_argument("--repeats", type=int, default=5, help="runs per median (>= 5)")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8"])
    parser.add_argument("--baseline", type=Path, default=None, help="another source tree to run fp32 from too")
    parser.add_argument(
        "--baseline-legacy", action="store_true", help="the baseline predates the pixel budget and spinning setting"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="ONNX Runtime intra-op threads, server and raw alike (0: its default)"
    )
    parser.add_argument(
        "--batch-max-pixels",
        type=int,
        nargs="+",
        default=None,
        help="MSDN_BATCH_MAX_PIXELS values to serve this tree with, one server each (default: the setting's)",
    )
    parser.add_argument(
        "--server-env",
        nargs="+",
        default=[],
        metavar="K=V[,K=V]",
        help="extra server variants of this tree (e.g. MSDN_INTRA_OP_SPINNING=false), one server each, "
        "with the first --batch-max-pixels value; the raw runner follows MSDN_INTRA_OP_SPINNING (default off)",
    )
    parser.add_argument("--load", action="store_true", help="also the concurrent-clients table")
    parser.add_argument("--load-requests", type=int, default=4, help="requests per client in the load test")
    args = parser.parse_args()
    if args.repeats < 5:
        parser.error("--repeats must be >= 5")

    work = Path(tempfile.mkdtemp(prefix="msdn-bench-"))
    generated = args.model is None
    if generated:
        args.model = work / "conv.onnx"
        conv_model(args.model, channels=args.channels, layers=args.layers, patch_size=(128, 128))
        model_name = f"random 3x3-conv model ({args.layers} layers x {args.channels} channels, mask = HU > 200)"
    else:
        model_name = str(args.model)
    files = {"fp32": args.model}
    if "int8" in args.precisions:
        int8 = int8_of(args.model, generated)
        if int8 is None:
            print(f"no {args.model.stem}.int8.onnx next to the model: int8 rows left out")
        else:
            files["int8"] = int8
    batch = int(os.environ.get("MSDN_BATCH_SIZE", "8"))
    from service.settings import BATCH_MAX_PIXELS

    budgets = args.batch_max_pixels or [int(os.environ.get("MSDN_BATCH_MAX_PIXELS", BATCH_MAX_PIXELS))]
    threads = args.threads or "ORT default"
    print(
        f"model: {model_name}; patch {read_card(args.model)[0].input.patch_size}; CPU, {os.cpu_count()} cores; "
        f"batch {batch}; intra-op threads {threads}; load average at start {os.getloadavg()[0]:.2f}"
    )

    vol = volume(args.slices)
    boxes = make_boxes(args.slices, args.boxes)
    cases = [
        (f"boxes: {args.boxes} boxes, {args.slices}x512x512", encode(vol, {"boxes": json.dumps(boxes)}), "boxes"),
        (f"whole series {args.slices}x512x512", encode(vol, {"mode": "slices"}), "slices"),
    ]
    big = volume(args.big_slices, seed=5) if args.big_slices else None
    if big is not None:
        cases.append((f"whole series {args.big_slices}x512x512", encode(big, {"mode": "slices"}), "big"))
    print(f"uploads: {', '.join(f'{len(u[0]) / 2**20:.0f} MiB' for _, u, _ in cases)} of DICOM files")

    servers = [
        ("this tree" if len(budgets) == 1 else f"this tree, max pixels {budget:,}", ROOT, p, args.model, budget, {})
        for budget in budgets
        for p in args.precisions
        if p in files
    ]
    for variant in args.server_env:
        extra = dict(item.split("=", 1) for item in variant.split(","))
        servers += [(f"this tree, {variant}", ROOT, p, args.model, budgets[0], extra) for p in args.precisions]
    if args.baseline is not None:
        base_model = args.model
        if generated:  # the same weights (same seed), written by the baseline's code in its card format
            base_model = work / "base" / "conv.onnx"
            base_model.parent.mkdir()
            code = (
                "import sys; from pathlib import Path; from tests.support.onnx_models import conv_model; "
                f"conv_model(Path(sys.argv[1]), channels={args.channels}, layers={args.layers}, patch_size=(128, 128))"
            )
            root = str(args.baseline.resolve())
            env = {**os.environ, "PYTHONPATH": root}
            subprocess.run([sys.executable, "-c", code, str(base_model)], cwd=root, env=env, check=True)
        if args.baseline_legacy:  # a tree from before session 4: no pixel budget, spinning threads
            servers.append(("baseline", args.baseline.resolve(), "fp32", base_model, 0, {}))
        else:
            servers.append(("baseline", args.baseline.resolve(), "fp32", base_model, budgets[0], {}))
    rows, idle, loads = [], [], []
    for tree, root, precision, model, budget, extra in servers:
        spinning = extra.get("MSDN_INTRA_OP_SPINNING", "false").lower() in ("1", "true", "on", "yes")
        if tree == "baseline" and args.baseline_legacy:
            spinning = True  # such a tree's ONNX Runtime spins (it has no such setting)
        raw = RawRunner(files[precision], batch, max_pixels=budget, threads=args.threads, spinning=spinning)
        inputs = {"boxes": raw.crops(vol, boxes), "slices": raw.slices(vol)}
        env = {
            "MSDN_PRECISION": precision,
            "MSDN_BATCH_MAX_PIXELS": str(budget),
            "MSDN_INTRA_OP_THREADS": str(args.threads),
            **extra,
        }
        proc, url = serve(root, model, work / f"server-{precision}-{len(idle)}.log", env)
        try:
            started = vm_kib(proc.pid, "VmRSS")
            post(url, cases[0][1])  # first request: warm caches
            warmed = settled_rss(proc.pid)
            served = httpx.get(f"{url}/v1/model").json().get("precision", "fp32 (not reported)")
            idle.append((tree, precision, served, started / 1024, warmed / 1024))
            for label, upload, kind in cases:
                if kind == "big":
                    inputs["big"] = raw.slices(big)
                loads.append(os.getloadavg()[0])
                r = compare(proc, url, raw, upload, inputs[kind], args.repeats)
                loads.append(os.getloadavg()[0])
                n = args.big_slices if kind == "big" else args.slices
                rows.append({"case": label, "tree": tree, "precision": served, "slices": n, **r})
                inputs.pop("big", None)
            if args.load:
                print(f"\nconcurrent clients ({tree}, {precision}), box-mode request, {args.load_requests} each\n")
                print("| clients | ok | 503 | throughput req/s | p50 s | p99 s |")
                print("| ---: | ---: | ---: | ---: | ---: | ---: |")
                for clients in (1, 4, 8):
                    r = load(url, cases[0][1], clients, args.load_requests)
                    print(
                        f"| {r['clients']} | {r['ok']} | {r['rejected']} | {r['throughput']:.2f} | "
                        f"{r['p50']:.3f} | {r['p99']:.3f} |"
                    )
        finally:
            stop_server(proc)
    # The HTTP floor of the box-mode upload: the same body to an app that only reads it, and to one
    # that also parses the multipart form (benchmarks/ingest_floor.py), through uvicorn alike.
    proc, url = serve(ROOT, args.model, work / "floor.log", app="benchmarks.ingest_floor:app")
    try:
        loads.append(os.getloadavg()[0])
        floors = floor(url, cases[0][1], args.repeats)
        loads.append(os.getloadavg()[0])
    finally:
        stop_server(proc)
    box_raw = rows[0]["raw"]
    floor_rows = (
        ("read", "body read only"),
        ("form", "body + Starlette's multipart parse"),
        ("spool", "body + the service's spooling parse"),
    )
    for place, (endpoint, what) in enumerate(floor_rows):
        rows.insert(
            1 + place,
            {
                "case": f"floor: {cases[0][0]} upload, {what}",
                "tree": "ingest floor app",
                "precision": "-",
                "slices": args.slices,
                "e2e": floors[endpoint],
                "raw": box_raw,
                "floor": True,
            },
        )

    print(
        f"\n/segment vs raw ONNX Runtime, median of {args.repeats}; load average {min(loads):.1f}-{max(loads):.1f} "
        f"on {os.cpu_count()} cores\n"
    )
    print(
        "| case | tree | precision | end-to-end s | raw ORT s | ratio | server inference s | ratio vs server "
        "inference | server read s | slices/s |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if r.get("floor"):  # ratio: the floor's time over the box-mode raw ORT time of the first server
            print(
                f"| {r['case']} | {r['tree']} | - | {r['e2e']:.3f} | {r['raw']:.3f} | {r['e2e'] / r['raw']:.2f} "
                "| - | - | - | - |"
            )
            continue
        print(
            f"| {r['case']} | {r['tree']} | {r['precision']} | {r['e2e']:.3f} | {r['raw']:.3f} | "
            f"{r['e2e'] / r['raw']:.2f} | {r['infer']:.3f} | {r['e2e'] / r['infer']:.2f} | {r['read']:.3f} | "
            f"{r['slices'] / r['e2e']:.1f} |"
        )
    print(
        "\nfloor rows: the box-mode upload posted to benchmarks/ingest_floor.py through uvicorn; ratio = that time "
        "over the box-mode raw ORT time, so the lowest box-mode ratio any code of ours can reach is 1 + it"
    )
    print("\nserver memory per request (medians): resident size before, peak over it, after the answer over it\n")
    print(
        "| case | tree | precision | int16 volume MiB | RSS before MiB | peak over before MiB | after over before MiB |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: |")
    for r in (r for r in rows if not r.get("floor")):
        print(
            f"| {r['case']} | {r['tree']} | {r['precision']} | {r['slices'] * SIZE * SIZE * 2 / 2**20:.0f} | "
            f"{r['pre_mib']:.0f} | {r['peak_mib']:.0f} | {r['after_mib']:+.0f} ({r['after_pct']:+.1f}%) |"
        )
    print("\nidle footprint (VmRSS)\n")
    print("| tree | precision asked | served | after start-up MiB | after the first request MiB |")
    print("| --- | --- | --- | ---: | ---: |")
    for tree, precision, served, started, warmed in idle:
        print(f"| {tree} | {precision} | {served} | {started:.0f} | {warmed:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
