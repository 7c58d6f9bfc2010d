"""Push listener with faults injected for real: a real Orthanc (started by the tests), a real Storage
SCP, instances pushed with pynetdicom, the SEG read back from Orthanc through its REST API."""

from __future__ import annotations

import io
import socket
import time
from collections.abc import Callable, Sequence

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from service.settings import Settings
from tests.service.pacs.fault_proxy import FaultProxy
from tests.service.pacs.orthanc_server import OrthancServer, free_port
from tests.service.pacs.test_router import make_app
from tests.service.pacs.threshold_pipeline import sort_by_position, threshold_mask, threshold_pipeline
from tests.support.dicom_series import ct_series

pytestmark = pytest.mark.orthanc

MODALITY_AE = "MODALITY1"
IDLE_S = 0.6


def wait_for(predicate: Callable[[], object], timeout: float = 20.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def a_series(n: int = 6) -> list[pydicom.Dataset]:
    """n slices of 16 x 16 with a left-right gradient (so the threshold mask is half full)."""
    hu = np.tile(np.linspace(-500, 500, 16), (n, 16, 1))
    hu += np.arange(n)[:, None, None] * 10.0
    return ct_series(hu)


def associate(port: int, datasets: Sequence[pydicom.Dataset], calling: str = MODALITY_AE):
    ae = AE(ae_title=calling)
    for sop_class in sorted({str(ds.SOPClassUID) for ds in datasets}):
        ae.add_requested_context(sop_class, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="MSDN")
    assert assoc.is_established, "the listener refused the association"
    return assoc


def send(assoc, datasets: Sequence[pydicom.Dataset]) -> list[int]:
    return [int(assoc.send_c_store(ds).Status) for ds in datasets]


def push(port: int, datasets: Sequence[pydicom.Dataset], calling: str = MODALITY_AE) -> list[int]:
    """C-STORE each dataset on one association; the statuses answered."""
    assoc = associate(port, datasets, calling)
    try:
        return send(assoc, datasets)
    finally:
        assoc.release()


def listener_env(monkeypatch, orthanc: OrthancServer, port: int, **extra: str) -> None:
    values = {
        "PROTOCOL": "dimse",
        "AE_TITLE": "MSDN",
        "PEER_AE_TITLE": orthanc.aet,
        "PEER_PORT": str(orthanc.dicom_port),
        "STORAGE_HOST": "127.0.0.1",
        "STORAGE_PORT": str(port),
        "LISTENER_ENABLED": "true",
        "LISTENER_SERIES_IDLE_S": str(IDLE_S),
        "LISTENER_ALLOWED_AES": f'["{MODALITY_AE}"]',
        "JOB_RETRY_INITIAL_S": "0.3",
        "JOB_RETRY_MAX_S": "1",
        "CONNECT_TIMEOUT_S": "2",
        "ACSE_TIMEOUT_S": "3",
        **extra,
    }
    for key, value in values.items():
        monkeypatch.setenv(f"MSDN_PACS_{key}", value)


def listener_app(**settings):
    app = make_app(None, pipeline=threshold_pipeline)
    app.state.settings = Settings(_env_file=None, **settings)  # the modality policy: CT only
    return app


def seg_series(orthanc: OrthancServer, study_uid: str) -> list[str]:
    return orthanc.find("Series", {"StudyInstanceUID": study_uid, "Modality": "SEG"})


def read_seg(orthanc: OrthancServer, series_id: str) -> hd.seg.Segmentation:
    instances = orthanc.rest.get(f"{orthanc.url}/series/{series_id}/instances", timeout=10).json()
    assert len(instances) == 1
    return hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(orthanc.instance_file(instances[0]["ID"]))))


def check_seg_covers(seg: hd.seg.Segmentation, datasets: Sequence[pydicom.Dataset]) -> None:
    """The SEG references exactly ``datasets`` and holds the threshold mask computed here."""
    ordered = sort_by_position(datasets)
    referenced = {
        str(item.ReferencedSOPInstanceUID)
        for series in seg.ReferencedSeriesSequence
        for item in series.ReferencedInstanceSequence
    }
    assert referenced == {str(ds.SOPInstanceUID) for ds in datasets}
    got = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in ordered], segment_numbers=[1]
    )[..., 0]
    np.testing.assert_array_equal(got > 0, threshold_mask(ordered))


def job_of(api: TestClient, series_uid: str) -> dict | None:
    jobs = api.get("/v1/pacs/jobs", params={"kind": "pacs-push"}).json()["jobs"]
    return next((j for j in jobs if j["series_uid"] == series_uid), None)


def wait_state(api: TestClient, series_uid: str, state: str, timeout: float = 20.0) -> dict:
    def reached():
        job = job_of(api, series_uid)
        return job if job is not None and job["state"] == state else None

    return wait_for(reached, timeout, f"job of {series_uid} to be {state}")  # type: ignore[return-value]


# --- Orthanc pushes a series (the classic route) -------------------------------------------------


def test_orthanc_pushes_a_series_and_gets_the_seg_back(monkeypatch, orthanc, pacs_series):
    ct5 = pacs_series["ct5"]
    listener_env(monkeypatch, orthanc, orthanc.scp_port)
    before = set(seg_series(orthanc, ct5.study_uid))
    with TestClient(listener_app()) as api:
        (series_id,) = orthanc.find("Series", {"SeriesInstanceUID": ct5.series_uid})
        # Orthanc C-STOREs the series to its modality "msdn" = MSDN@127.0.0.1:scp_port (our listener).
        response = orthanc.rest.post(f"{orthanc.url}/modalities/msdn/store", data=series_id, timeout=30)
        assert response.status_code == 200, response.text
        job = wait_state(api, ct5.series_uid, "done")
    new = set(seg_series(orthanc, ct5.study_uid)) - before
    assert len(new) == 1, orthanc.log_tail()
    seg = read_seg(orthanc, new.pop())
    assert seg.SOPInstanceUID == job["seg_sop_instance_uid"]
    assert job["instances"] == 5 and job["attempts"] == 1 and job["dropped"] == []
    check_seg_covers(seg, ct5.datasets)


# --- refused at C-STORE ------------------------------------------------------------------------


def test_bad_instances_are_refused_at_c_store_and_the_rest_is_segmented(monkeypatch, orthanc, pacs_series):
    series = a_series(6)
    bad = series[-1]
    bad.PixelData = bad.PixelData[:-64]  # truncated pixel data
    good = series[:-1]
    mr = pacs_series["mr_small"].datasets[0]
    our_seg = threshold_pipeline(pacs_series["ct5"].datasets)  # a SEG routed back to us
    port = free_port()
    listener_env(monkeypatch, orthanc, port)
    with TestClient(listener_app()) as api:
        statuses = push(port, series + [mr, our_seg])
        assert statuses == [0x0000] * 5 + [0xA900, 0xC011, 0x0122]
        job = wait_state(api, good[0].SeriesInstanceUID, "done")
        detail = api.get(f"/v1/pacs/jobs/{job['id']}").json()
        mr_job = wait_state(api, str(mr.SeriesInstanceUID), "failed")
    assert detail["instances"] == 5
    assert detail["dropped"] == [
        {
            "sop_instance_uid": str(bad.SOPInstanceUID),
            "code": "pixel_data_invalid",
            "reason": detail["dropped"][0]["reason"],
        }
    ]
    assert "pixel data is" in detail["dropped"][0]["reason"]
    assert mr_job["error"]["code"] == "modality_not_allowed" and mr_job["instances"] == 0
    (seg_id,) = seg_series(orthanc, good[0].StudyInstanceUID)
    check_seg_covers(read_seg(orthanc, seg_id), good)


# --- resends and split associations ------------------------------------------------------------


def test_the_same_series_sent_again_gives_one_seg(monkeypatch, orthanc):
    series = a_series(4)
    port = free_port()
    listener_env(monkeypatch, orthanc, port)
    with TestClient(listener_app()) as api:
        assert push(port, series) == [0] * 4
        assert push(port, series) == [0] * 4  # resent within the idle window: no duplicate slices
        first = wait_state(api, series[0].SeriesInstanceUID, "done")
        assert push(port, series) == [0] * 4  # resent after the SEG was stored
        time.sleep(IDLE_S * 4)
        again = job_of(api, series[0].SeriesInstanceUID)
    assert again is not None
    assert (again["state"], again["attempts"], again["instances"]) == ("done", 1, 4)
    assert again["seg_sop_instance_uid"] == first["seg_sop_instance_uid"]
    (seg_id,) = seg_series(orthanc, series[0].StudyInstanceUID)
    check_seg_covers(read_seg(orthanc, seg_id), series)


def test_a_series_split_over_two_associations_gives_one_seg(monkeypatch, orthanc):
    series = a_series(6)
    port = free_port()
    listener_env(monkeypatch, orthanc, port)
    with TestClient(listener_app()) as api:
        first = associate(port, series)
        assert send(first, series[:3]) == [0] * 3
        time.sleep(IDLE_S * 3)  # quiet longer than the idle time, but its association is still open
        assert job_of(api, series[0].SeriesInstanceUID)["state"] == "receiving"
        assert push(port, series[3:]) == [0] * 3  # the rest on a second association
        first.release()
        job = wait_state(api, series[0].SeriesInstanceUID, "done")
    assert job["instances"] == 6
    (seg_id,) = seg_series(orthanc, series[0].StudyInstanceUID)
    check_seg_covers(read_seg(orthanc, seg_id), series)


# --- the PACS fails while the SEG is stored ----------------------------------------------------


def test_pacs_down_during_the_store_then_back(monkeypatch, tmp_path):
    port = free_port()
    pacs = OrthancServer(tmp_path / "orthanc", modalities={"msdn": ("MSDN", "127.0.0.1", port)}).start()
    try:
        listener_env(monkeypatch, pacs, port)
        series = a_series(4)
        pacs.stop()
        with TestClient(listener_app()) as api:
            assert push(port, series) == [0] * 4  # spooled: Success although the PACS is down
            job = wait_for(
                lambda: (j := job_of(api, series[0].SeriesInstanceUID)) and j["attempts"] >= 2 and j,
                what="two failed store attempts",
            )
            assert job["state"] in ("retrying", "running") and job["result_kept"] is True
            assert job["error"]["code"] == "pacs_unavailable"
            pacs.start()
            done = wait_state(api, series[0].SeriesInstanceUID, "done")
            retries = api.app.state.pacs_jobs.metrics.retries._value.get()
        (seg_id,) = seg_series(pacs, series[0].StudyInstanceUID)
        seg = read_seg(pacs, seg_id)
        assert seg.SOPInstanceUID == done["seg_sop_instance_uid"]
        check_seg_covers(seg, series)
        assert retries >= 1 and done["attempts"] >= 3
    finally:
        pacs.stop()


def test_busy_pacs_503_is_retried_as_retry_after_says(monkeypatch, orthanc):
    proxy = FaultProxy(orthanc.url).start()
    try:
        port = free_port()
        listener_env(
            monkeypatch,
            orthanc,
            port,
            PROTOCOL="dicomweb",
            DICOMWEB_URL=f"{proxy.url}/dicom-web",
            DICOMWEB_AUTH="basic",
            DICOMWEB_USERNAME=orthanc.username,
            DICOMWEB_PASSWORD=orthanc.password,
        )
        proxy.fail("POST", "/dicom-web/studies", times=2, retry_after="1")
        series = a_series(4)
        with TestClient(listener_app()) as api:
            assert push(port, series) == [0] * 4
            job = wait_state(api, series[0].SeriesInstanceUID, "done")
        stows = proxy.requests_to("POST", "/dicom-web/studies")
        assert [status for _, status in stows] == [503, 503, 200]
        gaps = np.diff([t for t, _ in stows])
        assert (gaps >= 0.95).all(), gaps  # Retry-After: 1 honoured (the back-off alone is 0.3 s, 0.6 s)
        assert job["attempts"] == 3
        (seg_id,) = seg_series(orthanc, series[0].StudyInstanceUID)
        check_seg_covers(read_seg(orthanc, seg_id), series)
    finally:
        proxy.stop()


def test_busy_pacs_on_segment_keeps_the_seg_and_stores_it_later(monkeypatch, orthanc, pacs_series):
    ct5 = pacs_series["ct5"]
    proxy = FaultProxy(orthanc.url).start()
    try:
        for key, value in {
            "PROTOCOL": "dicomweb",
            "DICOMWEB_URL": f"{proxy.url}/dicom-web",
            "DICOMWEB_AUTH": "basic",
            "DICOMWEB_USERNAME": orthanc.username,
            "DICOMWEB_PASSWORD": orthanc.password,
            "JOB_RETRY_INITIAL_S": "0.3",
        }.items():
            monkeypatch.setenv(f"MSDN_PACS_{key}", value)
        proxy.fail("POST", "/dicom-web/studies", times=1, retry_after="1")
        before = set(seg_series(orthanc, ct5.study_uid))
        with TestClient(make_app(None)) as api:
            body = {"study_uid": ct5.study_uid, "series_uid": ct5.series_uid, "store_result": True}
            response = api.post("/v1/pacs/segment", json=body)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "1"
            error = response.json()
            assert error["code"] == "pacs_busy"
            job_id, seg_uid = error["detail"]["job_id"], error["detail"]["seg_sop_instance_uid"]
            assert error["detail"]["job_state"] == "retrying"
            job = wait_for(lambda: (j := api.get(f"/v1/pacs/jobs/{job_id}").json())["state"] == "done" and j)
            # The same request again: the same (deterministic) SEG, stored over itself, no second series.
            again = api.post("/v1/pacs/segment", json=body)
            assert again.status_code == 200, again.text
        assert job["seg_sop_instance_uid"] == seg_uid == again.json()["seg_sop_instance_uid"]
        assert job["attempts"] == 2 and job["result_kept"] is False
        # One SEG with that UID on the PACS (an earlier test may have stored it already: same series,
        # same pipeline, same instances give the same UID), and at most one new SEG series.
        assert len(orthanc.find("Instance", {"SOPInstanceUID": seg_uid})) == 1
        assert len(set(seg_series(orthanc, ct5.study_uid)) - before) <= 1
    finally:
        proxy.stop()


def test_a_seg_that_cannot_be_stored_is_kept_and_its_uid_logged(monkeypatch, orthanc, caplog):
    proxy = FaultProxy(orthanc.url).start()
    try:
        port = free_port()
        listener_env(
            monkeypatch,
            orthanc,
            port,
            PROTOCOL="dicomweb",
            DICOMWEB_URL=f"{proxy.url}/dicom-web",
            DICOMWEB_AUTH="basic",
            DICOMWEB_USERNAME=orthanc.username,
            DICOMWEB_PASSWORD=orthanc.password,
            JOB_DEADLINE_S="1.5",
        )
        proxy.fail("POST", "/dicom-web/studies", times=-1, retry_after=None)  # busy for good
        series = a_series(3)
        with TestClient(listener_app()) as api:
            assert push(port, series) == [0] * 3
            job = wait_state(api, series[0].SeriesInstanceUID, "failed")
            kept = api.app.state.pacs_jobs.store.get(job["id"]).result_path
    finally:
        proxy.stop()
    assert job["result_kept"] is True and job["error"]["code"] == "pacs_busy"
    assert "gave up after" in job["error"]["message"] and job["attempts"] >= 2
    seg = pydicom.dcmread(kept)  # the SEG on disk, whole
    assert seg.SOPInstanceUID == job["seg_sop_instance_uid"] and seg.Modality == "SEG"
    assert any(job["seg_sop_instance_uid"] in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    assert seg_series(orthanc, series[0].StudyInstanceUID) == []


def test_a_busy_pacs_during_the_fetch_is_retried_as_retry_after_says(monkeypatch, orthanc, pacs_series):
    ct5 = pacs_series["ct5"]
    proxy = FaultProxy(orthanc.url).start()
    try:
        for key, value in {
            "PROTOCOL": "dicomweb",
            "DICOMWEB_URL": f"{proxy.url}/dicom-web",
            "DICOMWEB_AUTH": "basic",
            "DICOMWEB_USERNAME": orthanc.username,
            "DICOMWEB_PASSWORD": orthanc.password,
            "DICOMWEB_MAX_ATTEMPTS": "3",
        }.items():
            monkeypatch.setenv(f"MSDN_PACS_{key}", value)
        proxy.fail("GET", f"/series/{ct5.series_uid}", times=2, retry_after="1")  # the WADO-RS retrieve
        with TestClient(make_app(None)) as api:
            response = api.post("/v1/pacs/segment", json={"study_uid": ct5.study_uid, "series_uid": ct5.series_uid})
        assert response.status_code == 200, response.text
        assert response.json()["instances"] == 5
        retrieves = [(t, status) for t, m, p, status in proxy.log if m == "GET" and f"/series/{ct5.series_uid}" in p]
        assert [status for _, status in retrieves[:3]] == [503, 503, 200]
        assert (np.diff([t for t, _ in retrieves[:3]]) >= 0.95).all()
    finally:
        proxy.stop()


# --- association limits ------------------------------------------------------------------------


def test_idle_connections_do_not_lock_the_listener_out(monkeypatch, orthanc):
    port = free_port()
    listener_env(
        monkeypatch, orthanc, port, LISTENER_MAX_ASSOCIATIONS="2", LISTENER_ASSOCIATION_IDLE_S="1", ACSE_TIMEOUT_S="1"
    )
    idle = []
    with TestClient(listener_app()):
        try:
            for _ in range(12):  # more than pynetdicom's default limit of 10, never associating
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
            for calling, accepted in (("STRANGER", False), (MODALITY_AE, True)):
                ae = AE(ae_title=calling)
                ae.add_requested_context(Verification)
                assoc = ae.associate("127.0.0.1", port, ae_title="MSDN")
                assert assoc.is_established is accepted, calling
                if accepted:
                    assert assoc.send_c_echo().Status == 0
                    time.sleep(2)  # idle past MSDN_PACS_LISTENER_ASSOCIATION_IDLE_S
                    assert not assoc.is_established  # closed by the listener
        finally:
            for sock in idle:
                sock.close()
        # Over MSDN_PACS_LISTENER_MAX_ASSOCIATIONS established associations: the third is aborted.
        held = [associate(port, a_series(1)) for _ in range(2)]
        extra = AE(ae_title=MODALITY_AE)
        extra.add_requested_context(Verification)
        third = extra.associate("127.0.0.1", port, ae_title="MSDN")
        wait_for(lambda: not third.is_established, 5, "the third association to be aborted")
        for assoc in held:
            assoc.release()
