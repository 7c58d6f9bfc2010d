"""A real ``msdn serve`` process is stopped (SIGTERM) right after a push and started again: the spooled
series is segmented with the real ONNX model after the restart and its SEG reaches the real Orthanc."""

from __future__ import annotations

import io
import signal
import sys

import highdicom as hd
import httpx
import numpy as np
import pydicom
import pytest

from service.jobs.store import JobStore
from tests.service.helpers import THRESHOLD_HU
from tests.service.pacs.orthanc_server import free_port
from tests.service.pacs.test_listener import MODALITY_AE, push, wait_for
from tests.support.dicom_series import ct_series
from tests.support.live_server import start_server, stop_server
from tests.support.onnx_models import expected_labels

pytestmark = pytest.mark.orthanc


def test_sigterm_right_after_a_push_then_restart_delivers_the_seg(model_1c, orthanc, tmp_path):
    hu = np.tile(np.linspace(-300, 300, 32), (4, 32, 1))
    series = ct_series(hu)
    port, scp_port = free_port(), free_port()
    data_dir = tmp_path / "data"
    env = {
        "MSDN_MODEL_PATH": str(model_1c),
        "MSDN_INTRA_OP_THREADS": "1",
        "MSDN_WARMUP": "false",
        "MSDN_DATA_DIR": str(data_dir),
        "MSDN_PACS_PROTOCOL": "dimse",
        "MSDN_PACS_AE_TITLE": "MSDN",
        "MSDN_PACS_PEER_AE_TITLE": orthanc.aet,
        "MSDN_PACS_PEER_PORT": str(orthanc.dicom_port),
        "MSDN_PACS_STORAGE_HOST": "127.0.0.1",
        "MSDN_PACS_STORAGE_PORT": str(scp_port),
        "MSDN_PACS_LISTENER_ENABLED": "true",
        "MSDN_PACS_LISTENER_SERIES_IDLE_S": "3",
        "MSDN_PACS_LISTENER_ALLOWED_AES": MODALITY_AE,
    }
    args = [
        sys.executable,
        "-c",
        "from model_export.cli import main; raise SystemExit(main())",
        "serve",
        "--port",
        str(port),
    ]
    first = start_server(args, env, port, tmp_path / "first.log")
    try:
        assert push(scp_port, series) == [0] * 4
    finally:
        first.send_signal(signal.SIGTERM)  # well inside the 3 s idle time: the series is still pending
        first.wait(timeout=30)
    store = JobStore(data_dir)
    (job,) = store.list()
    assert job.state.value == "receiving" and store.count_items(job.id, state="ok") == 4
    store.close()
    assert orthanc.find("Series", {"StudyInstanceUID": series[0].StudyInstanceUID, "Modality": "SEG"}) == []

    second = start_server(args, env, port, tmp_path / "second.log")
    try:
        url = f"http://127.0.0.1:{port}/v1/pacs/jobs/{job.id}"
        done = wait_for(lambda: (j := httpx.get(url, timeout=5).json())["state"] == "done" and j, 60, "the SEG")
    finally:
        stop_server(second)
    (seg_series,) = orthanc.find("Series", {"StudyInstanceUID": series[0].StudyInstanceUID, "Modality": "SEG"})
    instances = orthanc.rest.get(f"{orthanc.url}/series/{seg_series}/instances", timeout=10).json()
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(orthanc.instance_file(instances[0]["ID"]))))
    assert seg.SOPInstanceUID == done["seg_sop_instance_uid"]
    got = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in series], segment_numbers=[1]
    )[..., 0]
    np.testing.assert_array_equal(got, expected_labels(hu, (THRESHOLD_HU,)))
    assert "resumes receiving" in (tmp_path / "second.log").read_text()
