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
