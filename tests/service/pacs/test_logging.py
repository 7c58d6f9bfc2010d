"""Logs of a whole PACS round trip (ours and the libraries') never hold patient identifiers."""

from __future__ import annotations

import logging

import pydicom
import pytest
from fastapi.testclient import TestClient

from tests.service.pacs.test_router import make_app

pytestmark = pytest.mark.orthanc


def _identifiers(series) -> set[str]:
    values = set()
    for path in series.files:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
            value = str(ds.get(keyword, "") or "")
            if value:
                values.add(value)
                values.update(part for part in value.split("^") if len(part) > 2)
    return values


def test_round_trip_logs_no_patient_identifiers(caplog, pacs_client, pacs_series):
    caplog.set_level(logging.DEBUG)  # everything: ours, dicomweb-client, pynetdicom, urllib3
    with TestClient(make_app(pacs_client)) as api:
        for name in ("ct5", "ct_small"):
            series = pacs_series[name]
            assert api.get(f"/v1/pacs/studies/{series.study_uid}/series").status_code == 200
            response = api.post(
                "/v1/pacs/segment",
                json={"study_uid": series.study_uid, "series_uid": series.series_uid, "store_result": True},
            )
            assert response.status_code == 200, response.text
    text = caplog.text
    libraries = {record.name.split(".")[0] for record in caplog.records}
    expected = {"dicomweb_client"} if pacs_client.protocol == "dicomweb" else {"pynetdicom"}
    assert expected <= libraries  # the libraries' debug logs are part of what is checked
    assert pacs_series["ct5"].series_uid in text  # the logs do say what happened...
    identifiers = _identifiers(pacs_series["ct5"]) | _identifiers(pacs_series["ct_small"])
    assert {"Doe^Peter", "98890234", "CompressedSamples^CT1", "1CT1"} <= identifiers  # ...the test knows them
    leaked = sorted(value for value in identifiers if value in text)
    assert leaked == [], f"patient identifiers in the logs: {leaked}"
