"""Peak server memory per input format, and the model grid's resampling against the model's time.

    PYTHONPATH=. python benchmarks/input_memory.py                       # 300 x 512^2 at 0.7 mm, 3 runs
    PYTHONPATH=. python benchmarks/input_memory.py --slices 120 --repeats 2

One synthetic CT series (``benchmarks.service.volume``: ``--slices`` x 512 x 512, int16 HU, 0.7 mm
pixels, 1.25 mm slices) is encoded once per format (DICOM files, NIfTI ``.nii``, ``.nii.gz``, NRRD,
``.npy`` with a ``spacing`` field) and posted to a real uvicorn server of ``--model`` (CPU, fp32, one
ONNX Runtime thread) in ``--mode`` (default ``slices``: the whole volume goes through the model grid).
The default model's card asks for 1.2539 mm pixels, so every request resamples 512^2 -> 286^2 and the
labels back (``msdn_core.grid``).

Printed, medians of ``--repeats`` runs per format (formats alternating):

1. Memory: the server's peak resident size during the request over its settled resident size before
   it (``VmHWM`` after ``/proc/PID/clear_refs``), as a multiple of the int16 volume, against the
   target 2 x volume + 300 MB; the upload's size; the server's read / inference / total seconds.
2. Time: ``GridTransform.to_model`` (image onto the grid) and ``labels_to_native`` (labels back) of
   this volume in this process, against the server's inference seconds for the same volume.
"""

from __future__ import annotations

import argparse
import gzip
import io
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.service import post, reset_peak, serve, settled_rss, vm_kib, volume  # noqa: E402
from msdn_core.onnx_model import read_card  # noqa: E402
from msdn_core.volume import Volume  # noqa: E402
from service.settings import Settings  # noqa: E402
from tests.support.dicom_series import ct_series, series_files  # noqa: E402
from tests.support.live_server import ROOT, stop_server  # noqa: E402

logger = logging.getLogger("benchmarks.input_memory")
FORMATS = ("dicom", "nifti", "nifti-gz", "nrrd", "npy")


def _affine_ras(spacing_zyx: tuple[float, ...]) -> np.ndarray:
    """The NIfTI (RAS) affine of a (Z, Y, X) volume stored as (x, y, z) in DICOM's LPS axial view."""
    sz, sy, sx = spacing_zyx
    return np.diag([-sx, -sy, sz, 1.0])


def _multipart(files: list[tuple[str, tuple[str, bytes, str]]], data: dict[str, str]) -> tuple[bytes, dict]:
    import httpx

    request = httpx.Request("POST", "http://x/segment", files=files, data=data)
    body = request.read()
    return body, {"content-type": request.headers["content-type"]}


def uploads(hu: np.ndarray, spacing: tuple[float, float, float], mode: str) -> dict[str, tuple[bytes, dict]]:
    """The series as each format's multipart body (encoded once)."""
    import nibabel as nib
    import nrrd

    data = {"format": "json", "mode": mode}
    out = {}
    series = ct_series(hu.astype(np.float32) + 0.0, spacing=spacing, origin=(0.0, 0.0, 0.0))
    out["dicom"] = _multipart(
        [("dicom", (name, blob, "application/dicom")) for name, blob in series_files(series)], data
    )
    image = nib.Nifti1Image(np.ascontiguousarray(hu.transpose(2, 1, 0)), _affine_ras(spacing))
    raw = image.to_bytes()
    out["nifti"] = _multipart([("volume", ("ct.nii", raw, "application/octet-stream"))], data)
    out["nifti-gz"] = _multipart([("volume", ("ct.nii.gz", gzip.compress(raw, 1), "application/gzip"))], data)
    with tempfile.TemporaryDirectory() as tmp:
        sz, sy, sx = spacing
        header = {
            "space": "left-posterior-superior",
            "space directions": np.diag([sx, sy, sz]),
            "space origin": np.zeros(3),
        }
        nrrd.write(f"{tmp}/ct.nrrd", np.ascontiguousarray(hu.transpose(2, 1, 0)), header, index_order="F")
        out["nrrd"] = _multipart(
            [("volume", ("ct.nrrd", Path(f"{tmp}/ct.nrrd").read_bytes(), "application/octet-stream"))], data
        )
    buf = io.BytesIO()
    np.save(buf, hu)
    npy_data = {**data, "spacing": ",".join(str(v) for v in spacing)}
    out["npy"] = _multipart([("volume", ("ct.npy", buf.getvalue(), "application/octet-stream"))], npy_data)
    return out


def grid_times(model: Path, hu: np.ndarray, spacing: tuple[float, float, float], repeats: int) -> dict[str, float]:
    """Median seconds of bringing ``hu`` onto the model's grid and labels of that grid back."""
    card, _ = read_card(model)
    grid = Settings(_env_file=None, model_path=model).model_grid(card)
    affine = np.diag([spacing[2], spacing[1], spacing[0], 1.0])  # (x, y, z) LPS, as the readers give
    image = Volume(array=hu, affine=affine, source="npy")
    transform = grid.transform_for(image)
    to_model, back = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        model_image = transform.to_model(hu)
        to_model.append(time.perf_counter() - t0)
        labels = (model_image > 200).astype(np.uint8)
        t0 = time.perf_counter()
        transform.labels_to_native(labels)
        back.append(time.perf_counter() - t0)
    return {
        "to_model_s": statistics.median(to_model),
        "labels_back_s": statistics.median(back),
        "model_shape": "x".join(str(v) for v in transform.shape),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "default.onnx")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--pixel-mm", type=float, default=0.7)
    parser.add_argument("--slice-mm", type=float, default=1.25)
    parser.add_argument("--mode", default="slices", choices=("slices", "auto", "boxes"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads of the server")
    parser.add_argument("--formats", nargs="+", default=list(FORMATS), choices=FORMATS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.repeats < 1 or args.slices < 1:
        parser.error("--repeats and --slices must be >= 1")

    hu = np.round(volume(args.slices)).astype(np.int16)
    spacing = (args.slice_mm, args.pixel_mm, args.pixel_mm)
    volume_mb = hu.nbytes / 2**20
    bodies = uploads(hu, spacing, args.mode)
    logger.info("volume %s int16 = %.0f MiB; uploads encoded", hu.shape, volume_mb)
    env = {
        "MSDN_PRECISION": "fp32",
        "MSDN_INTRA_OP_THREADS": str(args.threads),
        "MSDN_MAX_SLICES": str(max(2048, args.slices)),
        "MSDN_REQUEST_TIMEOUT_S": "3600",
    }
    rows: dict[str, dict[str, list[float]]] = {f: {} for f in args.formats}
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = serve(ROOT, args.model, Path(tmp) / "server.log", env)
        try:
            idle_kib = settled_rss(proc.pid)
            post(url, bodies["nifti"])  # warm-up: arenas and caches at their steady size
            for r in range(args.repeats):
                for fmt in args.formats:
                    before = settled_rss(proc.pid)
                    exact = reset_peak(proc.pid)
                    seconds, body = post(url, bodies[fmt])
                    peak = vm_kib(proc.pid, "VmHWM") if exact else float("nan")
                    row = rows[fmt]
                    for key, value in (
                        ("peak_mb", (peak - before) / 1024),
                        ("wall_s", seconds),
                        ("read_s", body["timing"]["read_s"]),
                        ("inference_s", body["timing"]["inference_s"]),
                        ("total_s", body["timing"]["total_s"]),
                    ):
                        row.setdefault(key, []).append(value)
                    logger.info("run %d %s: peak +%.0f MiB, %.1f s", r + 1, fmt, (peak - before) / 1024, seconds)
            idle_after_kib = settled_rss(proc.pid)
        finally:
            stop_server(proc)
    times = grid_times(args.model, hu, spacing, args.repeats)

    load = os.getloadavg()[0]
    target = 2 * volume_mb + 300
    print(
        f"\n### Peak memory per input format: {args.slices} x 512 x 512 int16 ({volume_mb:.0f} MiB), "
        f"{args.pixel_mm} mm pixels, mode {args.mode}, fp32, {args.threads} ORT thread(s), "
        f"median of {args.repeats}, load {load:.2f}\n"
    )
    print(f"server idle after start-up {idle_kib / 1024:.0f} MiB, after the runs {idle_after_kib / 1024:.0f} MiB\n")
    print(
        "| format | upload MiB | peak over idle MiB | x int16 volume | target (2x + 300) MiB "
        "| read s | inference s | total s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for fmt in args.formats:
        m = {k: statistics.median(v) for k, v in rows[fmt].items()}
        size = len(bodies[fmt][0]) / 2**20
        print(
            f"| {fmt} | {size:.0f} | {m['peak_mb']:.0f} | {m['peak_mb'] / volume_mb:.2f} | {target:.0f} "
            f"{'(met)' if m['peak_mb'] <= target else '(missed)'} | {m['read_s']:.2f} | {m['inference_s']:.2f} "
            f"| {m['total_s']:.2f} |"
        )
    inference = statistics.median(v for fmt in args.formats for v in rows[fmt]["inference_s"])
    print(
        f"\n### The model grid's resampling ({times['model_shape']} model grid), this process, "
        f"median of {args.repeats}\n"
    )
    print("| step | seconds | share of the model's inference |")
    print("|---|---|---|")
    for key, name in (("to_model_s", "image onto the model grid"), ("labels_back_s", "labels back onto 512^2")):
        print(f"| {name} | {times[key]:.2f} | {times[key] / inference:.1%} |")
    total = times["to_model_s"] + times["labels_back_s"]
    print(f"| both | {total:.2f} | {total / inference:.1%} (inference {inference:.2f} s) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
