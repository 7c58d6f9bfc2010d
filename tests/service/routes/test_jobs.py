"""``/v1/jobs`` through the app (TestClient, real ONNX threshold model, real SQLite store on disk)."""

from __future__ import annotations

import gzip
import io
import time

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from service.errors import Overloaded
from service.jobs.store import JobStore
from service.model import ModelRuntime
from service.outputs.rle import decode
from service.segment_jobs import SegmentJobs, public_state
from tests.service.helpers import THRESHOLD_HU, make_settings
from tests.support.dicom_series import ct_series, phantom, to_bytes
from tests.support.onnx_models import expected_labels


def _files(hu):
    return [("dicom", (f"{i}.dcm", to_bytes(d), "application/dicom")) for i, d in enumerate(ct_series(hu))]


def _wait(client, location, timeout_s=60.0):
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        body = client.get(location).json()
        if body["state"] not in ("queued", "running"):
            return body
        time.sleep(0.05)
    raise AssertionError(f"job {location} did not finish: {body}")


def test_job_round_trip_all_formats(make_client, model_1c, tmp_path):
    hu = phantom((5, 32, 32), seed=2)
    client = make_client(model_1c, data_dir=tmp_path)
    r = client.post("/v1/jobs", files=_files(hu), data={"mode": "slices"})
    assert r.status_code == 202, r.text
    location = r.headers["location"]
    assert location == f"/v1/jobs/{r.json()['id']}" and r.json()["state"] in ("queued", "running")
    assert (tmp_path / "jobs.sqlite3").is_file()

    status = _wait(client, location)
    assert status["state"] == "done", status
    assert status["progress"] == {"slices_done": 5, "slices_total": 5}
    assert status["result"] == f"{location}/result" and status["timing"]["run_s"] >= 0
    assert set(status["formats"]) == {"json", "nifti", "png", "dicom-seg"}

    expected = expected_labels(hu, (THRESHOLD_HU,))
    body = client.get(f"{location}/result").json()
    np.testing.assert_array_equal(decode(body["mask"]), expected)
    direct = client.post("/segment", files=_files(hu), data={"mode": "slices"}).json()
    assert body["mask"] == direct["mask"] and body["classes"] == direct["classes"]

    nifti = client.get(f"{location}/result", headers={"Accept": "application/gzip"})
    assert nifti.headers["content-type"] == "application/gzip"
    img = nib.Nifti1Image.from_bytes(gzip.decompress(nifti.content))
    assert int(np.asarray(img.dataobj).sum()) == int(expected.sum())
    seg = client.get(f"{location}/result?format=dicom-seg")
    assert seg.headers["content-type"] == "application/dicom"
    assert isinstance(hd.seg.segread(io.BytesIO(seg.content)), hd.seg.Segmentation)
    png = client.get(f"{location}/result", headers={"Accept": "image/png"})
    assert Image.open(io.BytesIO(png.content)).format == "PNG"
    assert client.get(f"{location}/result", headers={"Accept": "text/csv"}).json()["code"] == "not_acceptable"

    assert client.delete(location).status_code == 204
    assert client.get(location).status_code == 404
    assert client.get(location).json()["code"] == "not_found"
    assert not (tmp_path / "jobs" / r.json()["id"]).exists()


def test_failed_job_keeps_the_segment_error(make_client, model_1c, tmp_path):
    client = make_client(model_1c, data_dir=tmp_path)
    r = client.post("/v1/jobs", files=[("dicom", ("x.dcm", b"garbage", "application/dicom"))])
    assert r.status_code == 202
    status = _wait(client, r.headers["location"])
    assert status["state"] == "failed" and status["error"]["code"] == "not_dicom"
    result = client.get(f"{r.headers['location']}/result")
    assert result.status_code == 422 and result.json()["code"] == "not_dicom"


def test_form_checked_before_queueing(make_client, model_1c, tmp_path):
    client = make_client(model_1c, data_dir=tmp_path)
    r = client.post("/v1/jobs", data={"mode": "slices"})
    assert r.status_code == 422 and r.json()["code"] == "no_input"
    volume = io.BytesIO()
    np.save(volume, np.zeros((2, 8, 8), np.float32))
    r = client.post("/v1/jobs", files=[("volume", ("v.npy", volume.getvalue()))], data={"format": "dicom-seg"})
    assert r.status_code == 422 and r.json()["code"] == "format_needs_dicom"
    assert client.get("/v1/jobs/nope").status_code == 404


@pytest.fixture
def idle_jobs(model_1c, tmp_path):
    """A job runner whose workers are not started: jobs stay queued."""
    settings = make_settings(model_1c, data_dir=tmp_path, max_queued_jobs=2, job_ttl_s=60, retry_after_s=7)
    store = JobStore(tmp_path)
    jobs = SegmentJobs(store, ModelRuntime.load(model_1c, providers=["CPUExecutionProvider"]), settings)
    yield jobs
    store.close()


def _submit(jobs, hu):
    return jobs.submit(dicom=[(n, b) for _, (n, b, _) in _files(hu)], volume=None, reference=None, form={})


def test_bounded_queue_cancel_and_expiry(idle_jobs):
    hu = phantom((2, 16, 16))
    first, second = _submit(idle_jobs, hu), _submit(idle_jobs, hu)
    with pytest.raises(Overloaded) as info:
        _submit(idle_jobs, hu)
    assert info.value.status == 503 and info.value.headers["Retry-After"] == "7"

    cancelled = idle_jobs.cancel_or_delete(first.id)
    assert public_state(cancelled) == "cancelled"
    assert not (idle_jobs.store.job_dir(first.id) / "inputs").exists()
    _submit(idle_jobs, hu)  # a cancelled job frees its place in the queue

    assert idle_jobs.expire(now=time.time() + 30) == 0
    assert idle_jobs.expire(now=time.time() + 61) == 1  # the cancelled one; queued jobs never expire
    assert idle_jobs.get(first.id) is None and idle_jobs.get(second.id) is not None


def test_restart_queues_running_jobs_again(idle_jobs):
    job = _submit(idle_jobs, phantom((3, 16, 16), seed=4))
    idle_jobs.store.update(job.id, state="running")  # what a killed process leaves
    idle_jobs.start()
    try:
        end = time.monotonic() + 30
        while public_state(idle_jobs.get(job.id)) != "done" and time.monotonic() < end:
            time.sleep(0.05)
        assert public_state(idle_jobs.get(job.id)) == "done"
        assert idle_jobs.result_path(idle_jobs.get(job.id), "json").is_file()
    finally:
        idle_jobs.stop()


def test_cancel_a_running_job(idle_jobs):
    job = _submit(idle_jobs, phantom((3, 16, 16)))
    running = idle_jobs.store.transition(job.id, ["queued"], "running")
    assert idle_jobs.cancel_or_delete(job.id).state.value == "running"  # stops at its next model batch
    idle_jobs._run(running)
    assert public_state(idle_jobs.get(job.id)) == "cancelled"
    assert not idle_jobs.result_path(idle_jobs.get(job.id), "json").exists()
    assert idle_jobs.cancel_or_delete(job.id) is None and idle_jobs.get(job.id) is None  # then deleted
