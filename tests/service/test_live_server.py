"""A real uvicorn process: HTTP round trips and schemathesis against the committed contract."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest

from service.outputs.rle import decode
from tests.service.helpers import THRESHOLD_HU, ct5n_paths
from tests.support.live_server import free_port, start_server, stop_server
from tests.support.onnx_models import expected_labels


@pytest.fixture(scope="module")
def server(model_1c, orthanc, pacs_series, tmp_path_factory):
    """uvicorn serving the threshold model, wired to a real Orthanc over DICOMweb (so the PACS routes
    answer for real under schemathesis too)."""
    port = free_port()
    log = tmp_path_factory.mktemp("uvicorn") / "server.log"
    env = {
        "MSDN_MODEL_PATH": str(model_1c),
        "MSDN_INTRA_OP_THREADS": "1",
        "MSDN_MIN_COMPONENT_MM3": "0",  # masks exactly as thresholded
        "MSDN_API_KEYS": "",
        "MSDN_DATA_DIR": str(tmp_path_factory.mktemp("data")),
        "MSDN_PACS_PROTOCOL": "dicomweb",
        "MSDN_PACS_DICOMWEB_URL": orthanc.dicomweb_url,
        "MSDN_PACS_DICOMWEB_AUTH": "basic",
        "MSDN_PACS_DICOMWEB_USERNAME": orthanc.username,
        "MSDN_PACS_DICOMWEB_PASSWORD": orthanc.password,
    }
    args = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port)]
    proc = start_server(args, env, port, log)
    yield f"http://127.0.0.1:{port}", log
    stop_server(proc)


def ct5n_files() -> list:
    return [("dicom", (Path(p).name, Path(p).read_bytes(), "application/dicom")) for p in ct5n_paths()]


def test_segment_over_real_http(server):
    url, log = server
    r = httpx.post(f"{url}/segment", files=ct5n_files(), timeout=60)
    assert r.status_code == 200, r.text
    datasets = sorted((pydicom.dcmread(p) for p in ct5n_paths()), key=lambda d: float(d.ImagePositionPatient[2]))
    hu = np.stack([pydicom.pixels.apply_modality_lut(d.pixel_array, d) for d in datasets])
    mask = decode(r.json()["mask"])
    np.testing.assert_array_equal(mask, expected_labels(hu, (THRESHOLD_HU,)))

    r = httpx.post(f"{url}/segment", files=ct5n_files(), headers={"Accept": "application/dicom"}, timeout=60)
    assert r.status_code == 200 and r.headers["content-type"] == "application/dicom"
    seg = hd.seg.segread(io.BytesIO(r.content))
    back = seg.get_pixels_by_source_instance(
        [str(d.SOPInstanceUID) for d in datasets], combine_segments=True, assert_missing_frames_are_empty=True
    )
    np.testing.assert_array_equal(back, mask)
    assert "Doe^Peter" not in log.read_text() and "98890234" not in log.read_text()


def test_bad_upload_over_real_http(server):
    url, _ = server
    r = httpx.post(f"{url}/segment", files=[("dicom", ("x.dcm", b"garbage", "application/dicom"))], timeout=30)
    assert r.status_code == 422 and r.json()["code"] == "not_dicom"
    assert (
        'msdn_http_requests_total{method="POST",route="/segment",status="422"} 1.0' in httpx.get(f"{url}/metrics").text
    )


def test_schemathesis_finds_no_server_errors(server, tmp_path):
    url, log = server
    st = shutil.which("st", path=os.path.dirname(sys.executable)) or shutil.which("st")
    assert st, "schemathesis CLI (st) not installed"
    cmd = [
        st,
        "run",
        f"{url}/openapi.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        "25",
        "--seed",
        "20240601",
        "--workers",
        "1",
        "--phases",
        "examples,coverage,fuzzing",
        "--request-timeout",
        "60",
        "--generation-database",
        "none",
        "--no-color",
    ]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output + "\n--- server log ---\n" + log.read_text()[-5000:]
    assert "/segment" in output
