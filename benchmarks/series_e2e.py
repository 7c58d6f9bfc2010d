"""A whole CT series through a real ``msdn serve``: upload -> DICOM decode -> inference -> answer.

    PYTHONPATH=. python benchmarks/series_e2e.py --providers cuda --slices 300     # on a GPU machine
    PYTHONPATH=. python benchmarks/series_e2e.py --providers cpu --slices 8        # a quick dry run

For each ``--providers`` / ``--precision`` pair a fresh ``msdn serve`` process loads ``--model`` (default
the committed ``models/default.onnx``; ``--precision fp16`` on CUDA makes its fp16 variant next to a
copy when there is none), and a synthetic ``--slices``-slice series of 512 x 512 CT slices is posted
as DICOM files ``--repeats`` times after one warm-up post. Reported: the client's wall time
(median; the multipart body is encoded once beforehand, so encoding is not timed), the server's own
split (read / inference / total), and the provider and precision ``/v1/model`` says are in use.
Prints a Markdown table (and writes it to ``--output``).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.service import volume  # noqa: E402
from tests.support.dicom_series import ct_series, series_files  # noqa: E402
from tests.support.live_server import free_port, start_server, stop_server  # noqa: E402


def encode(slices: int) -> tuple[bytes, dict[str, str]]:
    """The multipart body of a ``slices``-slice 512 x 512 series and its headers."""
    files = [("dicom", (name, data, "application/dicom")) for name, data in series_files(ct_series(volume(slices)))]
    request = httpx.Request("POST", "http://server/segment", files=files, data={"format": "json"})
    return request.read(), {"content-type": request.headers["content-type"]}


def model_for(model: Path, precision: str, work: Path) -> Path:
    """``model``, or a copy next to which its fp16 variant is made (``precision == "fp16"``)."""
    if precision != "fp16" or (model.parent / f"{model.stem}.fp16.onnx").is_file():
        return model
    from model_export.export.variants import make_fp16

    copy = work / model.name
    shutil.copy(model, copy)
    sidecar = model.with_suffix(".card.json")
    if sidecar.is_file():
        shutil.copy(sidecar, copy.with_suffix(".card.json"))
    make_fp16(copy)
    return copy


def run_case(model: Path, providers: str, precision: str, body: bytes, headers: dict, repeats: int, log: Path) -> dict:
    port = free_port()
    args = [sys.executable, "-m", "model_export.cli", "serve", "--model", str(model), "--port", str(port)]
    env = {"MSDN_PROVIDERS": providers, "MSDN_PRECISION": precision, "MSDN_MAX_SLICES": "4096", "MSDN_API_KEYS": ""}
    proc = start_server(args, env, port, log)
    try:
        url = f"http://127.0.0.1:{port}"
        info = httpx.get(f"{url}/v1/model", timeout=30).json()
        walls, answers = [], []
        for i in range(repeats + 1):
            t = time.perf_counter()
            r = httpx.post(f"{url}/segment", content=body, headers=headers, timeout=600)
            wall = time.perf_counter() - t
            if r.status_code != 200:
                raise RuntimeError(f"POST /segment answered {r.status_code}: {r.text[:500]}")
            if i:  # the first post warms the server (arena, CUDA kernels, TensorRT engines)
                walls.append(wall)
                answers.append(r.json()["timing"])
    finally:
        stop_server(proc)
    return {
        "provider": info["provider"],
        "precision": info["precision"],
        "wall_s": statistics.median(walls),
        "read_s": statistics.median(a["read_s"] for a in answers),
        "inference_s": statistics.median(a["inference_s"] for a in answers),
        "total_s": statistics.median(a["total_s"] for a in answers),
        "calls": answers[0]["model_calls"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default.onnx")
    parser.add_argument("--providers", nargs="+", default=["cuda"], help="MSDN_PROVIDERS values, one case each")
    parser.add_argument("--precision", nargs="+", default=["fp32"], help="MSDN_PRECISION values, one case each")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.slices < 1 or args.repeats < 1:
        parser.error("--slices and --repeats must be >= 1")
    body, headers = encode(args.slices)
    lines = [
        f"`POST /segment`, {args.slices} slices of 512 x 512 as DICOM files ({len(body) / 1e6:.0f} MB), "
        f"median of {args.repeats} after a warm-up, model {args.model.name}, cpu count {os.cpu_count()}",
        "",
        "| MSDN_PROVIDERS | MSDN_PRECISION | provider in use | precision in use | wall s | read s | inference s "
        "| server total s | model calls |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    with tempfile.TemporaryDirectory(prefix="msdn-e2e-") as tmp:
        for providers in args.providers:
            for precision in args.precision:
                if providers == "cpu" and precision == "fp16":
                    continue
                work = Path(tmp) / f"{providers}-{precision}"
                work.mkdir()
                try:
                    model = model_for(args.model, precision, work)
                    r = run_case(model, providers, precision, body, headers, args.repeats, work / "serve.log")
                except Exception as exc:  # noqa: BLE001 - a row saying why, the other cases still run
                    why = " ".join(str(exc).split()).replace("|", "/")
                    why = why if len(why) <= 300 else "..." + why[-300:]
                    lines.append(f"| {providers} | {precision} | failed: {why} | | | | | | |")
                    print(lines[-1], flush=True)
                    continue
                lines.append(
                    f"| {providers} | {precision} | {r['provider']} | {r['precision']} | {r['wall_s']:.2f} "
                    f"| {r['read_s']:.2f} | {r['inference_s']:.2f} | {r['total_s']:.2f} | {r['calls']} |"
                )
                print(lines[-1], flush=True)
    print("\n".join(lines))
    if args.output:
        args.output.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
