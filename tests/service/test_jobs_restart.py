"""HTTP jobs survive a restart of a real uvicorn process (SIGKILL, then a new process on the same
MSDN_DATA_DIR); ``msdn segment --url`` against the same server."""

from __future__ import annotations

import csv
import io
import sqlite3
import sys
import time

import httpx
import numpy as np

from model_export.cli import main
from service.outputs.rle import decode
from tests.service.helpers import THRESHOLD_HU
from tests.support.live_server import free_port, start_server, stop_server
from tests.support.onnx_models import expected_labels


def _serve(model, data_dir, log):
    port = free_port()
    env = {
        "MSDN_MODEL_PATH": str(model),
        "MSDN_INTRA_OP_THREADS": "1",
        "MSDN_BATCH_SIZE": "1",
        "MSDN_API_KEYS": "",
        "MSDN_DATA_DIR": str(data_dir),
        "MSDN_MAX_SLICES": "4096",
        "MSDN_MIN_COMPONENT_MM3": "0",  # masks exactly as thresholded
    }
    args = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port)]
    return start_server(args, env, port, log), f"http://127.0.0.1:{port}"


def test_job_survives_a_killed_server(model_1c, tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.normal(0, 200, size=(800, 32, 32)).astype(np.float32)  # long enough to be unfinished at the kill
    buf = io.BytesIO()
    np.save(buf, hu)
    data_dir = tmp_path / "data"

    proc, url = _serve(model_1c, data_dir, tmp_path / "first.log")
    try:
        r = httpx.post(
            f"{url}/v1/jobs",
            files=[("volume", ("long.npy", buf.getvalue()))],
            data={"spacing": "1,1,1", "mode": "slices"},
            timeout=60,
        )
        assert r.status_code == 202, r.text
        location = r.headers["location"]
    finally:
        proc.kill()  # SIGKILL: no shutdown, the job is left as the process had it
        proc.wait()
    with sqlite3.connect(data_dir / "jobs.sqlite3") as db:
        (state,) = db.execute("SELECT state FROM jobs WHERE id = ?", (r.json()["id"],)).fetchone()
    assert state in ("queued", "running"), f"the job finished before the kill ({state}): make the input longer"

    proc, url = _serve(model_1c, data_dir, tmp_path / "second.log")
    try:
        end = time.monotonic() + 240
        while time.monotonic() < end:
            status = httpx.get(f"{url}{location}", timeout=10).json()
            if status["state"] not in ("queued", "running"):
                break
            time.sleep(0.2)
        assert status["state"] == "done", status
        assert status["progress"]["slices_done"] == status["progress"]["slices_total"] == 800
        body = httpx.get(f"{url}{location}/result", timeout=30).json()
        np.testing.assert_array_equal(decode(body["mask"]), expected_labels(hu, (THRESHOLD_HU,)))
        if state == "running":  # a job killed while queued simply stays queued
            assert "queued again after a restart" in (tmp_path / "second.log").read_text()

        # the CLI's --url client sends the same work to this server
        study = tmp_path / "vol.npy"
        np.save(study, hu[:3])
        out = tmp_path / "out"
        rc = main(["segment", str(study), "-o", str(out), "--url", url, "--spacing", "1,1,1", "--no-progress"])
        assert rc == 0
        with open(out / "summary.csv") as fh:
            row = next(csv.DictReader(fh))
        assert int(row["tissue_voxels"]) == int(expected_labels(hu[:3], (THRESHOLD_HU,)).sum())
        assert (out / "vol" / "mask.nii.gz").is_file()
    finally:
        stop_server(proc)
