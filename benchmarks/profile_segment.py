"""Where one ``POST /segment`` request's time goes: a phase table, in process.

Run from the repository root (the tests' support modules build the inputs):

    PYTHONPATH=. python benchmarks/profile_segment.py                 # box mode, 20 boxes, 64 x 512^2
    PYTHONPATH=. python benchmarks/profile_segment.py --mode slices   # the whole series
    PYTHONPATH=. python benchmarks/profile_segment.py --http          # + one request through uvicorn
    PYTHONPATH=. python benchmarks/profile_segment.py --top 30        # + cProfile's top functions

The request takes the route's path from the multipart body to the answer bytes: the upload routes'
form parsing (``service.routes.spooled_form``: the body spooled to one file),
``service.request.run_request`` (zip expansion, header parse, series assembly, partial or
batch-by-batch decode, crops / slices, ONNX Runtime,
post-processing, reference work) and ``service.pipeline.render``. The model is the random 3x3-conv
model of ``tests/support/onnx_models.py``, the input a synthetic CT series of 512 x 512 DICOM files
(``benchmarks/service.py`` builds the same ones).

Phases are timed by wrapping the functions that make them with a wall-clock timer (a few
microseconds per call; cProfile would slow pydicom's many small calls several-fold): each phase's
time excludes the wrapped phases it calls. Printed, medians of ``--repeats`` requests:

1. the request's wall time with the batches made in the helper thread (as served) and in the
   calling thread (for the table), requests of the two kinds alternating, and the phase table of
   the latter (ms, % of total);
2. overlap: the calling thread's time waiting for the helper's next batch, against the time the
   batches take to make (decode included) without the helper;
3. with ``--http``: one request through a real uvicorn server, the client clock against the
   server's reported read / inference / total times.

The machine may be shared: every table says the load average it ran under.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import functools
import json
import os
import pstats
import statistics
import sys
import tempfile
import threading
import time
from collections import defaultdict
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msdn_core.readers.dicom as dicom_reader  # noqa: E402
import service.model as model_module  # noqa: E402
import service.pipeline as pipeline  # noqa: E402
import service.request as request_module  # noqa: E402
from benchmarks.service import encode, make_boxes, post, serve, volume  # noqa: E402
from service.concurrency import Deadline  # noqa: E402
from service.model import ModelRuntime  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.support.live_server import ROOT, stop_server  # noqa: E402
from tests.support.onnx_models import conv_model  # noqa: E402

MULTIPART = "multipart parse + spool"
RENDER = "answer encoding (render)"
ORT = "ONNX Runtime (session.run)"
DECODE = "pixel decode + modality LUT"
MAKE = "batch make / consume, inference loop"
WAIT = "waiting for the helper's batch"

#: (object, attribute, phase): the functions timed (module globals as the callers look them up).
TIMED: list[tuple[Any, str, str]] = [
    (request_module, "expand_files", "zip expansion"),
    (request_module, "parse_dicom", "header parse (parse_dicom)"),
    (request_module, "read_volume", "volume read (NIfTI / NRRD / npy)"),
    (request_module, "read_reference_file", "reference read"),
    (pipeline, "series_volume", "series assembly (read_series)"),
    (dicom_reader._SliceDecoder, "decode", DECODE),
    (pipeline, "parse_boxes", "boxes parse"),
    (pipeline, "match_reference", "reference match"),
    (pipeline, "labels_from_seg", "reference match"),
    (pipeline, "segment_volume_array", MAKE),
    (model_module.ModelRuntime, "run", ORT),
    (Future, "result", WAIT),
    (pipeline, "postprocess", "post-processing"),
    (pipeline, "evaluate", "Dice / metrics"),
]
ORDER = [MULTIPART] + list(dict.fromkeys(p for _, _, p in TIMED if p != WAIT)) + [RENDER]


class PhaseTimer:
    """Exclusive wall time per phase: a timed call's time, less that of the timed calls inside it (per thread)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.local = threading.local()

    def wrap(self, func: Callable, phase: str) -> Callable:
        @functools.wraps(func)
        def timed(*args, **kwargs):
            stack = self.local.__dict__.setdefault("stack", [])
            stack.append(0.0)
            t0 = time.perf_counter()
            try:
                return func(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - t0
                inner = stack.pop()
                self.seconds[phase] += elapsed - inner
                if stack:
                    stack[-1] += elapsed

        return timed

    def add(self, phase: str, seconds: float) -> None:
        self.seconds[phase] += seconds


def install(timer: PhaseTimer) -> None:
    for owner, name, phase in TIMED:
        setattr(owner, name, timer.wrap(getattr(owner, name), phase))


async def _form(body: bytes, content_type: str, settings: Settings):
    """The form parsing of ``body``, as FastAPI does for the route (the route's request class)."""
    from service.routes.spooled_form import SpooledFormRequest

    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]

    async def receive():
        if chunks:
            return {"type": "http.request", "body": chunks.pop(0), "more_body": bool(chunks)}
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/segment",
        "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
        "query_string": b"",
    }
    return await SpooledFormRequest(scope, receive).form(max_files=settings.max_files + 10, max_fields=1000)


def one_request(
    body: bytes, content_type: str, runtime: ModelRuntime, settings: Settings, fmt: str, timer: PhaseTimer
) -> bytes:
    """Form parse, ``run_request``, ``render``: the route's blocking path, in this thread."""
    t0 = time.perf_counter()
    form = asyncio.run(_form(body, content_type, settings))
    timer.add(MULTIPART, time.perf_counter() - t0)
    dicom = [(f.filename or "dicom", f.file) for f in form.getlist("dicom")]
    try:
        result = request_module.run_request(
            Deadline(None),
            runtime=runtime,
            settings=settings,
            dicom=dicom,
            volume=None,
            spacing=None,
            boxes=form.get("boxes"),
            reference=None,
            series_uid=None,
            mode=form.get("mode") or "auto",
        )
        t0 = time.perf_counter()
        answer, _, _ = pipeline.render(result, fmt, settings=settings)
        timer.add(RENDER, time.perf_counter() - t0)
    finally:
        asyncio.run(form.close())
    return answer


def measure(args, body, content_type, runtime, settings) -> dict[bool, tuple[float, dict[str, float], int]]:
    """Per overlap setting (True: batches made in the helper thread): median wall time and median
    phase seconds of ``args.repeats`` requests, the two settings alternating (same machine load)."""
    walls: dict[bool, list[float]] = defaultdict(list)
    phases: dict[bool, dict[str, list[float]]] = {True: defaultdict(list), False: defaultdict(list)}
    size = 0
    for _ in range(args.repeats):
        for overlap in (True, False):
            runtime.overlap = overlap
            timer = PhaseTimer()
            install(timer)
            try:
                t0 = time.perf_counter()
                size = len(one_request(body, content_type, runtime, settings, args.format, timer))
                walls[overlap].append(time.perf_counter() - t0)
            finally:
                uninstall()
            for phase in [*ORDER, WAIT]:
                phases[overlap][phase].append(timer.seconds.get(phase, 0.0))
    medians = {o: {k: statistics.median(v) for k, v in phases[o].items()} for o in (True, False)}
    return {o: (statistics.median(walls[o]), medians[o], size) for o in (True, False)}


_ORIGINALS = [(owner, name, getattr(owner, name)) for owner, name, _ in TIMED]


def uninstall() -> None:
    for owner, name, func in _ORIGINALS:
        setattr(owner, name, func)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["boxes", "slices"], default="boxes")
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--format", default="json", choices=["json", "nifti"])
    parser.add_argument("--repeats", type=int, default=5, help="requests per median")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--http", action="store_true", help="also one request through a uvicorn server")
    parser.add_argument("--top", type=int, default=0, help="also cProfile's top N functions by own time")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="msdn-profile-"))
    model = work / "conv.onnx"
    conv_model(model, channels=args.channels, layers=args.layers, patch_size=(128, 128))
    vol = volume(args.slices)
    data = {"boxes": json.dumps(make_boxes(args.slices, args.boxes))} if args.mode == "boxes" else {"mode": "slices"}
    body, headers = encode(vol, data)
    content_type = headers["content-type"]
    settings = Settings(
        model_path=model, providers=["CPUExecutionProvider"], api_keys=[], intra_op_threads=args.threads
    )
    runtime = ModelRuntime.from_settings(settings)
    runtime.warmup()
    case = f"{args.mode}: " + (f"{args.boxes} boxes, " if args.mode == "boxes" else "") + f"{args.slices}x512x512"
    load0 = os.getloadavg()[0]
    one_request(body, content_type, runtime, settings, args.format, PhaseTimer())  # warm: imports, arena

    runs = measure(args, body, content_type, runtime, settings)
    (served, with_helper, size), (total, phases, _) = runs[True], runs[False]
    load1 = os.getloadavg()[0]
    print(
        f"case: {case}, {len(body) / 2**20:.1f} MiB multipart body, answer {args.format} {size / 1024:.0f} KiB; "
        f"batch {runtime.batch_size} (at most {runtime.batch_max_pixels:,} pixels per call); intra-op threads "
        f"{args.threads or 'ORT default'}; load average {load0:.2f}-{load1:.2f} on {os.cpu_count()} cores; "
        f"medians of {args.repeats}"
    )
    print(
        f"wall: {served * 1e3:.0f} ms with the helper thread (as served), {total * 1e3:.0f} ms with batches "
        "made in the calling thread (the table)\n"
    )
    print("| phase | ms | % of total |")
    print("| --- | ---: | ---: |")
    for phase in ORDER:
        if phases.get(phase, 0.0) > 0:
            print(f"| {phase} | {phases[phase] * 1e3:.1f} | {100 * phases[phase] / total:.1f} |")
    rest = total - sum(phases.get(p, 0.0) for p in ORDER)
    print(f"| other (glue, form close, GC) | {rest * 1e3:.1f} | {100 * rest / total:.1f} |")
    print(f"| **total** | {total * 1e3:.1f} | 100 |")
    print(
        f"\nend-to-end / ORT: {total / phases[ORT]:.2f} (calling thread), {served / with_helper[ORT]:.2f} (helper "
        f"thread); outside ORT {(total - phases[ORT]) * 1e3:.0f} ms"
    )
    made = phases[DECODE] + phases[MAKE] if args.mode == "slices" else phases[MAKE]
    print(
        f"overlap: with the helper thread the calling thread waits {with_helper[WAIT] * 1e3:.0f} ms for batches; "
        f"ORT {with_helper[ORT] * 1e3:.0f} ms with it vs {phases[ORT] * 1e3:.0f} ms without; making batches and "
        f"consuming outputs (decode included) {made * 1e3:.0f} ms in the calling thread"
    )

    if args.top:
        runtime.overlap = False
        profile = cProfile.Profile()
        profile.enable()
        one_request(body, content_type, runtime, settings, args.format, PhaseTimer())
        profile.disable()
        pstats.Stats(profile).sort_stats("tottime").print_stats(args.top)

    if args.http:
        proc, url = serve(ROOT, model, work / "server.log", {"MSDN_INTRA_OP_THREADS": str(args.threads)})
        try:
            post(url, (body, headers))
            seconds, answer_json = post(url, (body, headers))
        finally:
            stop_server(proc)
        timing = answer_json["timing"]
        print(f"\none request through uvicorn, load average {os.getloadavg()[0]:.2f}\n")
        print("| what | ms |")
        print("| --- | ---: |")
        print(f"| client: POST to answer | {seconds * 1e3:.0f} |")
        for key, value in timing.items():
            if key.endswith("_s"):
                print(f"| server {key} | {value * 1e3:.0f} |")
        print(f"| outside the server's total (HTTP, multipart, encoding) | {(seconds - timing['total_s']) * 1e3:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
