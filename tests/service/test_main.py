"""The app around /segment: probes, model card, metrics, API keys, body limit, routers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fastapi import APIRouter
from fastapi.testclient import TestClient

from service.main import create_app
from service.model import file_sha256
from tests.service.helpers import ct5n_paths, make_settings


def upload():
    return [("dicom", (p.rsplit("/", 1)[-1], Path(p).read_bytes(), "application/dicom")) for p in ct5n_paths()]


def test_probes_and_model_card(client, model_1c):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["provider"] == "CPUExecutionProvider"
    card = client.get("/v1/model").json()
    assert card["name"] == "threshold" and card["sha256"] == file_sha256(model_1c)
    assert card["classes"] == [{"value": 1, "name": "tissue"}] and card["providers"] == ["CPUExecutionProvider"]
    assert card["input"]["patch_size"] == [32, 32] and card["detection"] is False


def test_not_ready_before_start_up(model_1c):
    client = TestClient(create_app(make_settings(model_1c), routers=[]))  # lifespan not run
    assert client.get("/healthz").status_code == 200
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["code"] == "not_ready"


def test_start_up_fails_on_a_bad_model(tmp_path):
    bad = tmp_path / "m.onnx"
    bad.write_bytes(b"not an onnx file")
    from service.errors import ModelLoadError

    with (
        pytest.raises(ModelLoadError, match="not a readable ONNX model"),
        TestClient(create_app(make_settings(bad), routers=[])),
    ):
        pass


def test_metrics_count_requests_slices_and_provider(client):
    client.post("/segment", files=upload())
    client.get("/nope")
    text = client.get("/metrics").text
    assert 'msdn_http_requests_total{method="POST",route="/segment",status="200"} 1.0' in text
    assert 'msdn_http_requests_total{method="GET",route="unmatched",status="404"} 1.0' in text
    assert "msdn_slices_processed_total 5.0" in text
    assert "msdn_patches_processed_total 5.0" in text
    assert "msdn_inference_seconds_count 1.0" in text
    assert 'provider="CPUExecutionProvider"' in text and "msdn_model_info" in text
    assert 'msdn_http_request_duration_seconds_count{method="POST",route="/segment"} 1.0' in text
    # The process's resident memory (the idle footprint), against /proc's own figure.
    rss = next(float(line.split()[1]) for line in text.splitlines() if line.startswith("process_resident_memory_bytes"))
    statm = int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert abs(rss - statm) < 0.2 * statm


def test_api_keys(make_client, model_1c):
    client = make_client(model_1c, api_keys=["s3cret", "other"])
    for path in ("/healthz", "/readyz"):
        assert client.get(path).status_code == 200
    for method, path in (
        ("get", "/v1/model"),
        ("get", "/metrics"),
        ("get", "/openapi.json"),
        ("get", "/docs"),
    ):
        r = getattr(client, method)(path)
        assert r.status_code == 401 and r.json()["code"] == "unauthorized", path
        assert r.headers["www-authenticate"].startswith("Bearer")
    assert client.post("/segment", files=upload()).status_code == 401
    assert client.get("/v1/model", headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.get("/v1/model", headers={"Authorization": "Basic czNjcmV0"}).status_code == 401
    assert client.get("/v1/model", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert client.get("/v1/model", headers={"Authorization": "Bearer other"}).status_code == 200
    assert client.post("/segment", files=upload(), headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_no_keys_means_open(client):
    assert client.get("/v1/model").status_code == 200
    assert client.get("/openapi.json").json()["info"]["title"] == "msdn inference service"
    assert "swagger" in client.get("/docs").text.lower()


def test_body_limit_declared_and_streamed(make_client, model_1c):
    client = make_client(model_1c, max_upload_bytes=10_000)
    big = [("dicom", ("big.dcm", b"\x00" * 20_000, "application/dicom"))]
    r = client.post("/segment", files=big)
    assert r.status_code == 413 and r.json()["code"] == "upload_too_large"
    assert "MSDN_MAX_UPLOAD_BYTES" in r.json()["message"]

    def chunks():
        for _ in range(30):
            yield b"x" * 1000

    r = client.post("/segment", content=chunks(), headers={"Content-Type": "multipart/form-data; boundary=abc"})
    assert r.status_code == 413 and r.json()["code"] == "upload_too_large"
    assert client.get("/healthz").status_code == 200


def test_extra_routers_join_behind_the_api_key(model_1c):
    extra = APIRouter()

    @extra.get("/pacs/ping")
    async def ping() -> dict:
        return {"pong": True}

    app = create_app(make_settings(model_1c, api_keys=["k"]), routers=[extra])
    with TestClient(app) as client:
        assert client.get("/pacs/ping").status_code == 401
        assert client.get("/pacs/ping", headers={"X-API-Key": "k"}).json() == {"pong": True}


def test_unexpected_errors_are_500_json_without_details(model_1c):
    broken = APIRouter()

    @broken.get("/boom")
    async def boom() -> dict:
        raise RuntimeError("secret internals")

    with TestClient(create_app(make_settings(model_1c), routers=[broken]), raise_server_exceptions=False) as client:
        r = client.get("/boom")
    assert r.status_code == 500 and r.json()["code"] == "internal_error" and "secret" not in r.text
