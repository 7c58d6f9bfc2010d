"""Where one ``POST /segment`` request's time goes: a phase table from cProfile, in process.

Run from the repository root (the tests' support modules build the inputs):

    PYTHONPATH=. python benchmarks/profile_segment.py                 # box mode, 20 boxes, 64 x 512^2
    PYTHONPATH=. python benchmarks/profile_segment.py --mode slices   # the whole series
    PYTHONPATH=. python benchmarks/profile_segment.py --http          # + one request through uvicorn

The request takes the route's path from the multipart body to the answer bytes: Starlette's form
parsing (python-multipart, spooling each file), ``service.request.run_request`` (zip expansion,
header parse, series assembly, partial or batch-by-batch decode, crops / slices, ONNX Runtime,
post-processing, reference work) and ``service.pipeline.render``. The model is the random 3x3-conv
model of ``tests/support/onnx_models.py``, the input a synthetic CT series of 512 x 512 DICOM files
(``benchmarks/service.py`` builds the same ones).

Printed: the wall time of the request without the profiler (median of ``--repeats``), then the
phases of one profiled run (cumulative seconds of the functions that make each phase, and their
share of the profiled total; the profiler slows Python code more than native code, so the shares
of Python phases are upper bounds). The profiled run makes batches in the calling thread (no
overlap) so that cProfile sees them. With ``--http`` a real uvicorn server answers one request and
the client clock is set against the server's reported read and inference times.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.service import encode, make_boxes, post, serve, volume  # noqa: E402
from service.concurrency import Deadline  # noqa: E402
from service.model import ModelRuntime  # noqa: E402
from service.pipeline import render  # noqa: E402
from service.request import run_request  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.support.live_server import ROOT, stop_server  # noqa: E402
from tests.support.onnx_models import conv_model  # noqa: E402

#: Phase -> the functions (file suffix, function name) whose cumulative time makes it, and the
#: functions of other phases that they call directly (subtracted: their time is counted there).
PHASES: list[tuple[str, list[tuple[str, str]], list[tuple[str, str]]]] = [
    ("multipart parse + spool", [("starlette/formparsers.py", "parse")], []),
    ("zip expansion", [("service/io/upload.py", "expand_files")], []),
    ("header parse (parse_dicom)", [("msdn_core/readers/dicom.py", "parse_dicom")], []),
    ("pixel decode + modality LUT", [("msdn_core/readers/dicom.py", "decode")], []),
    ("series assembly (read_series)", [("msdn_core/readers/dicom.py", "read_series")], [("dicom.py", "decode")]),
    ("boxes parse", [("service/boxes.py", "parse_boxes")], []),
    ("reference", [("msdn_core/reference.py", "match_reference"), ("msdn_core/reference.py", "labels_from_seg")], []),
    ("batch make (crop/pad/normalise)", [("service/inference.py", "make_batch")], [("volume.py", "load")]),
    ("ONNX Runtime (session.run)", [("service/model.py", "run")], []),
    ("batch consume (argmax, paste)", [("service/inference.py", "consume")], []),
    ("post-processing", [("msdn_core/postprocess.py", "postprocess")], []),
    ("Dice / metrics", [("service/evaluation.py", "evaluate")], []),
    ("answer encoding (render)", [("service/pipeline.py", "render")], []),
]


def _matches(key: tuple, suffix: str, func: str) -> bool:
    return key[2] == func and key[0].replace("\\", "/").endswith(suffix)


def _phase_seconds(stats: pstats.Stats, funcs: list[tuple[str, str]], minus: list[tuple[str, str]]) -> float:
    """Cumulative seconds of ``funcs`` less those of ``minus`` when called directly from them."""
    entries = stats.stats  # type: ignore[attr-defined]
    total = 0.0
    for key, (_, _, _, ct, _) in entries.items():
        if any(_matches(key, s, f) for s, f in funcs):
            total += ct
    for key, (_, _, _, _, callers) in entries.items():
        if any(_matches(key, s, f) for s, f in minus):
            for caller, timing in callers.items():
                if any(_matches(caller, s, f) for s, f in funcs):
                    total -= timing[3]
    return total


async def _form(body: bytes, content_type: str, settings: Settings):
    """Starlette's form parsing of ``body``, as FastAPI does for the route."""
    from starlette.requests import Request

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
    return await Request(scope, receive).form(max_files=settings.max_files + 10, max_fields=1000)


def one_request(body: bytes, content_type: str, runtime: ModelRuntime, settings: Settings, fmt: str) -> bytes:
    """Form parse, ``run_request``, ``render``: the route's blocking path, in this thread."""
    form = asyncio.run(_form(body, content_type, settings))
    dicom = [(f.filename or "dicom", f.file) for f in form.getlist("dicom")]
    try:
        result = run_request(
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
        answer, _, _ = render(result, fmt, settings=settings)
    finally:
        asyncio.run(form.close())
    return answer


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["boxes", "slices"], default="boxes")
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--boxes", type=int, default=20)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--format", default="json", choices=["json", "nifti"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--http", action="store_true", help="also one request through a uvicorn server")
    parser.add_argument("--top", type=int, default=0, help="also print the top N functions by own time")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="msdn-profile-"))
    model = work / "conv.onnx"
    conv_model(model, channels=args.channels, layers=args.layers, patch_size=(128, 128))
    vol = volume(args.slices)
    data = {"boxes": json.dumps(make_boxes(args.slices, args.boxes))} if args.mode == "boxes" else {"mode": "slices"}
    body, headers = encode(vol, data)
    content_type = headers["content-type"]
    settings = Settings(model_path=model, providers=["CPUExecutionProvider"], api_keys=[])
    runtime = ModelRuntime.from_settings(settings)
    runtime.warmup()
    case = f"{args.mode}: " + (f"{args.boxes} boxes, " if args.mode == "boxes" else "") + f"{args.slices}x512x512"
    print(f"case: {case}, {len(body) / 2**20:.1f} MiB multipart body, format {args.format}")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores; batch {runtime.batch_size}")

    one_request(body, content_type, runtime, settings, args.format)  # warm: imports, arena
    walls = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        answer = one_request(body, content_type, runtime, settings, args.format)
        walls.append(time.perf_counter() - t0)
    print(
        f"wall (no profiler, overlap {runtime.overlap}): median {statistics.median(walls) * 1e3:.0f} ms "
        f"of {args.repeats}; answer {len(answer) / 1024:.0f} KiB"
    )

    runtime.overlap = False
    profile = cProfile.Profile()
    t0 = time.perf_counter()
    profile.enable()
    one_request(body, content_type, runtime, settings, args.format)
    profile.disable()
    total = time.perf_counter() - t0
    stats = pstats.Stats(profile)
    values = {phase: _phase_seconds(stats, funcs, minus) for phase, funcs, minus in PHASES}
    print(f"\nprofiled run: {total * 1e3:.0f} ms (batches made in the calling thread)\n")
    print("| phase | ms | % of total |")
    print("| --- | ---: | ---: |")
    for phase, own in values.items():
        print(f"| {phase} | {own * 1e3:.1f} | {100 * own / total:.1f} |")
    accounted = sum(values.values())
    rest = total - accounted
    print(f"| other (glue, GC, imports) | {rest * 1e3:.1f} | {100 * rest / total:.1f} |")
    print(f"| **total** | {total * 1e3:.1f} | 100 |")
    outside = total - values["ONNX Runtime (session.run)"]
    print(
        f"\nend-to-end / ORT in this run: {total / values['ONNX Runtime (session.run)']:.2f} "
        f"(outside ORT {outside * 1e3:.0f} ms)"
    )
    if args.top:
        stats.sort_stats("tottime").print_stats(args.top)

    if args.http:
        proc, url = serve(ROOT, model, work / "server.log")
        try:
            post(url, (body, headers))
            seconds, answer_json = post(url, (body, headers))
        finally:
            stop_server(proc)
        timing = answer_json["timing"]
        print("\none request through uvicorn (client clock vs the server's reported phases)\n")
        print("| what | ms |")
        print("| --- | ---: |")
        print(f"| client: POST to answer | {seconds * 1e3:.0f} |")
        for key, value in timing.items():
            if key.endswith("_s"):
                print(f"| server {key} | {value * 1e3:.0f} |")
        rest = seconds - timing["total_s"]
        print(f"| outside the server's total (HTTP, multipart, encoding) | {rest * 1e3:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
