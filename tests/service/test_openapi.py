"""The committed openapi.yaml is the app's schema (regenerate: python -m service.openapi > openapi.yaml)."""

from __future__ import annotations

from pathlib import Path

import yaml

from service.openapi import openapi_yaml

ROOT = Path(__file__).resolve().parents[2]


def test_committed_openapi_matches_the_app():
    committed = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    current = yaml.safe_load(openapi_yaml())
    assert committed == current, "openapi.yaml is stale: run `python -m service.openapi > openapi.yaml`"


def test_schema_documents_the_multipart_contract():
    schema = yaml.safe_load(openapi_yaml())
    body = schema["paths"]["/segment"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    form = schema["components"]["schemas"][body["$ref"].rsplit("/", 1)[-1]]["properties"]
    assert {"dicom", "volume", "spacing", "boxes", "reference", "series_uid", "mode", "format"} <= set(form)
    responses = schema["paths"]["/segment"]["post"]["responses"]
    assert {"application/json", "application/gzip", "application/dicom"} <= set(responses["200"]["content"])
    assert {"401", "406", "413", "422", "503", "504"} <= set(responses)
