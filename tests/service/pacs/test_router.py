"""The PACS routes in a small FastAPI app, against the real Orthanc, with a real thresholding pipeline."""

from __future__ import annotations

import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import ValidationError

from service.errors import install_error_handlers
from service.pacs import create_pacs_client
from service.pacs.router import get_pacs_client, router
from tests.service.pacs.orthanc_server import free_port
from tests.service.pacs.threshold_pipeline import sort_by_position, threshold_mask, threshold_pipeline

pytestmark = pytest.mark.orthanc


def make_app(client=None, pipeline=threshold_pipeline) -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    app.state.pacs_client = client
    app.state.series_pipeline = pipeline
    return app


@pytest.fixture
def api(pacs_client):
    with TestClient(make_app(pacs_client)) as test_client:
        yield test_client


def _expected_mask(series) -> np.ndarray:
    return threshold_mask(sort_by_position(series.datasets))


def _seg_mask(seg: hd.seg.Segmentation, series) -> np.ndarray:
    uids = [ds.SOPInstanceUID for ds in sort_by_position(series.datasets)]
    return seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])[..., 0] > 0


def test_echo(api, pacs_client):
    response = api.get("/v1/pacs/echo")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["ok"] is True
    assert body["protocol"] == pacs_client.protocol
    assert body["peer"] == pacs_client.describe()


def test_find_series(api, pacs_series):
    ct5 = pacs_series["ct5"]
    response = api.get(f"/v1/pacs/studies/{ct5.study_uid}/series")
    assert response.status_code == 200, response.text
    items = {item["series_uid"]: item for item in response.json()}
    assert items[ct5.series_uid]["instance_count"] == 5
    assert items[ct5.series_uid]["modality"] == "CT"


def test_segment_and_store(api, pacs_series, orthanc):
    ct5 = pacs_series["ct5"]
    response = api.post(
        "/v1/pacs/segment",
        json={"study_uid": ct5.study_uid, "series_uid": ct5.series_uid, "store_result": True},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["instances"] == 5
    assert body["stored"] is True
    assert body["segments"] == [{"number": 1, "label": "bright"}]
    # The SEG is in Orthanc (read through its REST API) and holds the expected mask.
    files = orthanc.series_instance_files(body["seg_series_uid"])
    assert len(files) == 1
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(files[0])))
    assert seg.SOPInstanceUID == body["seg_sop_instance_uid"]
    assert seg.StudyInstanceUID == ct5.study_uid
    np.testing.assert_array_equal(_seg_mask(seg, ct5), _expected_mask(ct5))


def test_segment_returns_dicom_without_storing(api, pacs_series, orthanc):
    mr = pacs_series["mr_small"]
    response = api.post(
        "/v1/pacs/segment", json={"study_uid": mr.study_uid, "series_uid": mr.series_uid, "format": "dicom"}
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    assert response.headers["x-msdn-stored"] == "false"
    seg = hd.seg.Segmentation.from_dataset(pydicom.dcmread(io.BytesIO(response.content)))
    np.testing.assert_array_equal(_seg_mask(seg, mr), _expected_mask(mr))
    assert orthanc.find("Series", {"SeriesInstanceUID": seg.SeriesInstanceUID}) == []  # not stored


def test_segment_unknown_series_is_404(api, pacs_series):
    ct5 = pacs_series["ct5"]
    response = api.post("/v1/pacs/segment", json={"study_uid": ct5.study_uid, "series_uid": "1.2.826.0.1.3680043.99.7"})
    assert response.status_code == 404
    assert response.json()["code"] == "series_not_found"
    assert "1.2.826.0.1.3680043.99.7" in response.json()["message"]


@pytest.mark.parametrize(
    "body, field",
    [
        ({"study_uid": "1.2.3", "series_uid": "1.2.3.x"}, "series_uid"),
        ({"study_uid": "1.2.3", "series_uid": "1.2.3", "format": "png"}, "format"),
        ({"series_uid": "1.2.3"}, "study_uid"),
        ({"study_uid": "1.2.3", "series_uid": "1.2.3", "store_results": True}, "store_results"),  # misspelt
    ],
)
def test_segment_bad_request_is_422(api, body, field):
    response = api.post("/v1/pacs/segment", json=body)
    assert response.status_code == 422
    assert field in response.text


def test_segment_series_the_pipeline_refuses_is_422(pacs_client, pacs_series):
    def refuse(datasets):
        raise ValueError("no ImageOrientationPatient")

    ct5 = pacs_series["ct5"]
    with TestClient(make_app(pacs_client, pipeline=refuse)) as api:
        response = api.post("/v1/pacs/segment", json={"study_uid": ct5.study_uid, "series_uid": ct5.series_uid})
    assert response.status_code == 422
    assert "no ImageOrientationPatient" in response.json()["message"]


def test_no_pipeline_is_503(pacs_client, pacs_series):
    ct5 = pacs_series["ct5"]
    with TestClient(make_app(pacs_client, pipeline=None)) as api:
        response = api.post("/v1/pacs/segment", json={"study_uid": ct5.study_uid, "series_uid": ct5.series_uid})
    assert response.status_code == 503
    assert "pipeline" in response.json()["message"]


def test_unreachable_pacs_is_502(dimse_settings):
    client = create_pacs_client(dimse_settings.model_copy(update={"peer_port": free_port()}))
    with TestClient(make_app(client)) as api:
        response = api.get("/v1/pacs/echo")
    assert response.status_code == 502
    assert response.json()["code"] == "pacs_unavailable"
    assert "cannot connect" in response.json()["message"]


def test_client_from_environment(monkeypatch, orthanc, pacs_series):
    """No client on app.state: the router's lifespan builds one from MSDN_PACS_* and closes it."""
    monkeypatch.setenv("MSDN_PACS_PROTOCOL", "dicomweb")
    monkeypatch.setenv("MSDN_PACS_DICOMWEB_URL", orthanc.dicomweb_url)
    monkeypatch.setenv("MSDN_PACS_DICOMWEB_AUTH", "basic")
    monkeypatch.setenv("MSDN_PACS_DICOMWEB_USERNAME", orthanc.username)
    monkeypatch.setenv("MSDN_PACS_DICOMWEB_PASSWORD", orthanc.password)
    app = make_app(None)
    with TestClient(app) as api:
        assert api.get("/v1/pacs/echo").json()["protocol"] == "dicomweb"
        mr = pacs_series["mr_small"]
        response = api.post("/v1/pacs/segment", json={"study_uid": mr.study_uid, "series_uid": mr.series_uid})
        assert response.status_code == 200, response.text
        assert app.state.pacs_client.describe() == f"DICOMweb {orthanc.dicomweb_url}"
    assert app.state.pacs_client is None  # closed at shutdown


def test_pacs_not_configured_is_503(monkeypatch):
    monkeypatch.setenv("MSDN_PACS_PROTOCOL", "none")
    with TestClient(make_app(None)) as api:
        response = api.get("/v1/pacs/echo")
    assert response.status_code == 503
    assert response.json()["code"] == "pacs_not_configured"
    assert "MSDN_PACS_PROTOCOL" in response.json()["message"]


def test_invalid_pacs_settings_stop_the_start(monkeypatch):
    monkeypatch.setenv("MSDN_PACS_PROTOCOL", "dicomweb")
    monkeypatch.delenv("MSDN_PACS_DICOMWEB_URL", raising=False)
    with (
        pytest.raises(ValidationError, match="MSDN_PACS_DICOMWEB_URL is required"),
        TestClient(make_app(None)),
    ):
        pass


def test_settings_made_invalid_after_start_are_503(monkeypatch):
    """The lazy path (no client created at start): invalid settings answer 503, not 500."""
    monkeypatch.setenv("MSDN_PACS_PROTOCOL", "none")
    with TestClient(make_app(None)) as api:
        monkeypatch.setenv("MSDN_PACS_PROTOCOL", "dicomweb")
        response = api.get("/v1/pacs/echo")
    assert response.status_code == 503
    assert "MSDN_PACS_DICOMWEB_URL" in response.json()["message"]


def test_dependency_override():
    """The lead can inject the client with dependency_overrides instead of app.state."""

    class Fixed:
        protocol = "dimse"

        def describe(self):
            return "DICOM X@h:1"

        def echo(self):
            return None

    app = make_app(None)
    app.dependency_overrides[get_pacs_client] = lambda: Fixed()
    with TestClient(app) as api:
        assert api.get("/v1/pacs/echo").json()["peer"] == "DICOM X@h:1"
