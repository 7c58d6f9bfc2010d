"""The PACS router inside the real inference service app (``service.main``) with a real ONNX model.

``service.main`` and the test ONNX models come from the inference-service branch: until both branches
are merged this module is skipped; after the merge it checks the glue end to end (router found by
``create_app``, API key, model pipeline through the inference limiter, SEG stored to Orthanc).
"""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient

from tests.service.pacs.threshold_pipeline import sort_by_position, stored_values

main = pytest.importorskip("service.main", reason="service.main (inference service) is not in this branch yet")
onnx_models = pytest.importorskip("tests.support.onnx_models", reason="test ONNX models not in this branch yet")


pytestmark = pytest.mark.orthanc

API_KEY = "pacs-test-key"
THRESHOLD_HU = 0.0


@pytest.fixture
def service_app(tmp_path, monkeypatch, orthanc, pacs_series):
    from service.settings import Settings

    model = tmp_path / "threshold.onnx"
    onnx_models.threshold_model(model, thresholds_hu=(THRESHOLD_HU,), classes=["tissue"], std=100.0, sidecar=True)
    for key, value in {
        "PROTOCOL": "dicomweb",
        "DICOMWEB_URL": orthanc.dicomweb_url,
        "DICOMWEB_AUTH": "basic",
        "DICOMWEB_USERNAME": orthanc.username,
        "DICOMWEB_PASSWORD": orthanc.password,
    }.items():
        monkeypatch.setenv(f"MSDN_PACS_{key}", value)
    settings = Settings(_env_file=None, model_path=model, api_keys=[API_KEY], warmup=False, min_component_mm3=0)
    app = main.create_app(settings)  # routers=None: the installed optional routers, service.pacs among them
    with TestClient(app) as client:
        yield app, client


def test_pacs_routes_need_the_api_key(service_app):
    _, client = service_app
    assert client.get("/v1/pacs/echo").status_code == 401
    response = client.get("/v1/pacs/echo", headers={"X-API-Key": API_KEY})
    assert response.status_code == 200, response.text
    assert response.json()["protocol"] == "dicomweb"


def test_segment_with_the_service_model_and_store(service_app, orthanc, pacs_series):
    _, client = service_app
    ct5 = pacs_series["ct5"]
    response = client.post(
        "/v1/pacs/segment",
        headers={"X-API-Key": API_KEY},
        json={"study_uid": ct5.study_uid, "series_uid": ct5.series_uid, "store_result": True},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["stored"] is True and body["instances"] == 5
    (seg_file,) = orthanc.series_instance_files(body["seg_series_uid"])
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(seg_file)))
    ordered = sort_by_position(ct5.datasets)
    expected = np.stack([stored_values(ds) for ds in ordered]) > THRESHOLD_HU  # the model's rule, by hand
    got = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=[ds.SOPInstanceUID for ds in ordered], segment_numbers=[1]
    )[..., 0]
    np.testing.assert_array_equal(got > 0, expected)
    assert expected.any() and not expected.all()


# --- the PACS side inside the service: limiter, admission, modality, readiness, metrics, slow PACS ---


@pytest.fixture
def proxied_app(tmp_path, monkeypatch, orthanc, pacs_series):
    """The service app (threshold model, CT only, one inference slot, no queue) with DICOMweb through
    a fault-injecting proxy in front of the real Orthanc."""
    from service.settings import Settings
    from tests.service.pacs.fault_proxy import FaultProxy

    proxy = FaultProxy(orthanc.url).start()
    model = tmp_path / "threshold.onnx"
    onnx_models.threshold_model(model, thresholds_hu=(THRESHOLD_HU,), classes=["tissue"], std=100.0, sidecar=True)
    for key, value in {
        "PROTOCOL": "dicomweb",
        "DICOMWEB_URL": f"{proxy.url}/dicom-web",
        "DICOMWEB_AUTH": "basic",
        "DICOMWEB_USERNAME": orthanc.username,
        "DICOMWEB_PASSWORD": orthanc.password,
    }.items():
        monkeypatch.setenv(f"MSDN_PACS_{key}", value)
    settings = Settings(
        _env_file=None, model_path=model, warmup=False, max_concurrent_inferences=1, max_queued_requests=0
    )
    app = main.create_app(settings)
    try:
        with TestClient(app) as client:
            yield app, client, proxy
    finally:
        proxy.stop()


def test_admission_and_modality_are_checked_before_any_download(proxied_app, pacs_series):
    import threading

    app, client, proxy = proxied_app
    ct5, mr = pacs_series["ct5"], pacs_series["mr_small"]
    release = threading.Event()
    threads = []

    def slow_pipeline(datasets):
        threads.append(threading.current_thread().name)
        release.wait(30)
        from tests.service.pacs.threshold_pipeline import threshold_pipeline

        return threshold_pipeline(datasets)

    app.state.series_pipeline = slow_pipeline
    body = {"study_uid": ct5.study_uid, "series_uid": ct5.series_uid}
    first: list = []
    worker = threading.Thread(target=lambda: first.append(client.post("/v1/pacs/segment", json=body)))
    worker.start()
    try:
        import time

        deadline = time.monotonic() + 20
        while not threads and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threads and threads[0].startswith("msdn-inference")  # the service's inference limiter
        requests_before = len(proxy.log)
        busy = client.post("/v1/pacs/segment", json=body)
        assert busy.status_code == 503 and busy.json()["code"] == "overloaded"
        assert "retry-after" in busy.headers
        assert len(proxy.log) == requests_before  # refused before any QIDO-RS / WADO-RS request
    finally:
        release.set()
        worker.join(30)
    assert first[0].status_code == 200, first[0].text

    requests_before = len(proxy.log)
    response = client.post("/v1/pacs/segment", json={"study_uid": mr.study_uid, "series_uid": mr.series_uid})
    assert response.status_code == 422 and response.json()["code"] == "modality_not_allowed"
    asked = [path for _, _, path, _ in proxy.log[requests_before:]]
    assert asked and all("/series?" in path for path in asked), asked  # QIDO-RS only: never downloaded


def test_a_silent_pacs_does_not_block_readyz(tmp_path, monkeypatch):
    import threading
    import time

    from service.settings import Settings
    from tests.service.pacs.silent_server import SilentServer

    model = tmp_path / "threshold.onnx"
    onnx_models.threshold_model(model, thresholds_hu=(THRESHOLD_HU,), classes=["tissue"], std=100.0, sidecar=True)
    with SilentServer() as silent:
        for key, value in {
            "PROTOCOL": "dicomweb",
            "DICOMWEB_URL": f"http://127.0.0.1:{silent.port}/dicom-web",
            "NETWORK_TIMEOUT_S": "4",
            "IO_WORKERS": "4",
            "IO_MAX_QUEUED": "4",
            "IO_DEADLINE_S": "2",
        }.items():
            monkeypatch.setenv(f"MSDN_PACS_{key}", value)
        app = main.create_app(Settings(_env_file=None, model_path=model, warmup=False))
        with TestClient(app) as client:
            answers: list = []
            calls = [
                threading.Thread(target=lambda: answers.append(client.get("/v1/pacs/echo").json()["code"]))
                for _ in range(45)
            ]
            for call in calls:
                call.start()
            time.sleep(0.5)
            still_waiting = sum(call.is_alive() for call in calls)
            ready = client.get("/readyz")
            model_info = client.get("/v1/model")
            waiting_after = sum(call.is_alive() for call in calls)
            for call in calls:
                call.join(30)
    assert ready.status_code == 200 and model_info.status_code == 200
    assert still_waiting >= 1 and waiting_after >= 1  # answered while PACS calls were hanging
    # 8 calls get the pool (4 running + 4 waiting) and time out; the other 37 are refused at once.
    assert sorted(set(answers)) == ["pacs_busy", "pacs_timeout"]
    assert answers.count("pacs_busy") >= 30


def test_a_taken_storage_port_makes_readyz_fail_until_it_is_free(tmp_path, monkeypatch, orthanc, pacs_series):
    import importlib
    import socket
    import time

    pacs_router = importlib.import_module("service.pacs.router")  # the module (service.pacs.router is the APIRouter)
    from service.settings import Settings
    from tests.service.pacs.orthanc_server import free_port

    monkeypatch.setattr(pacs_router, "BIND_RETRY_S", 0.2)
    model = tmp_path / "threshold.onnx"
    onnx_models.threshold_model(model, thresholds_hu=(THRESHOLD_HU,), classes=["tissue"], std=100.0, sidecar=True)
    port = free_port()
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    blocker.bind(("127.0.0.1", port))
    blocker.listen()
    for key, value in {
        "PROTOCOL": "dimse",
        "PEER_AE_TITLE": orthanc.aet,
        "PEER_PORT": str(orthanc.dicom_port),
        "RETRIEVE": "c-move",
        "STORAGE_HOST": "127.0.0.1",
        "STORAGE_PORT": str(port),
    }.items():
        monkeypatch.setenv(f"MSDN_PACS_{key}", value)
    app = main.create_app(Settings(_env_file=None, model_path=model, warmup=False))
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/readyz")
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "not_ready" and str(port) in response.json()["message"]
        ct5 = pacs_series["ct5"]
        moved = client.post("/v1/pacs/segment", json={"study_uid": ct5.study_uid, "series_uid": ct5.series_uid})
        assert moved.status_code == 503 and moved.json()["code"] == "pacs_not_configured", moved.text  # not 500
        blocker.close()
        time.sleep(0.3)
        assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics").text
    assert 'msdn_pacs_jobs{state="done"}' in metrics
    assert "msdn_pacs_job_retries_total" in metrics
