"""``msdn serve`` (service.cli)."""

from __future__ import annotations

import argparse
import http.client
import json
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest

from model_export.cli import main
from service import cli
from tests.service.helpers import ct5n_paths
from tests.support.live_server import free_port, start_server, stop_server


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_options_override_the_environment(monkeypatch):
    monkeypatch.setenv("MSDN_PORT", "9000")
    monkeypatch.setenv("MSDN_MAX_SLICES", "7")
    settings = cli.settings_from_args(
        parse(
            [
                "--model",
                "m.onnx",
                "--port",
                "8123",
                "--api-key",
                "a",
                "--api-key",
                "b",
                "--providers",
                "CPUExecutionProvider",
            ]
        )
    )
    assert str(settings.model_path) == "m.onnx" and settings.port == 8123 and settings.max_slices == 7
    assert settings.api_keys == ["a", "b"] and settings.providers == ["CPUExecutionProvider"]
    assert cli.settings_from_args(parse([])).port == 9000


def test_missing_model_fails_fast_with_exit_code_2(tmp_path, caplog):
    assert main(["serve", "--model", str(tmp_path / "none.onnx")]) == 2
    assert "does not exist" in caplog.text


def test_msdn_serve_starts_a_working_server(model_1c, tmp_path):
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "model_export.cli",
        "serve",
        "--model",
        str(model_1c),
        "--port",
        str(port),
        "--threads",
        "1",
    ]
    proc = start_server(args, {}, port, tmp_path / "serve.log")
    try:
        card = httpx.get(f"http://127.0.0.1:{port}/v1/model").json()
        assert card["name"] == "threshold" and card["providers"] == ["CPUExecutionProvider"]
    finally:
        stop_server(proc)
    assert "serving" in (tmp_path / "serve.log").read_text()


def _multipart(paths) -> tuple[bytes, str]:
    """A /segment multipart body and its content type (httpx's own encoder)."""
    files = [("dicom", (Path(p).name, Path(p).read_bytes(), "application/dicom")) for p in paths]
    request = httpx.Request("POST", "http://x/segment", files=files)
    return request.read(), request.headers["content-type"]


@pytest.mark.parametrize(("grace_s", "finishes"), [(20, True), (1, False)])
def test_sigterm_lets_a_running_request_finish(model_1c, tmp_path, grace_s, finishes):
    """SIGTERM (docker stop) while a request is in flight: uvicorn stops accepting new connections and
    lets the running one finish within MSDN_SHUTDOWN_TIMEOUT_S; past that it is cut (never a hang)."""
    port = free_port()
    args = [sys.executable, "-m", "model_export.cli", "serve", "--model", str(model_1c), "--port", str(port)]
    proc = start_server(args, {"MSDN_SHUTDOWN_TIMEOUT_S": str(grace_s)}, port, tmp_path / "serve.log")
    body, content_type = _multipart(ct5n_paths())
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.putrequest("POST", "/segment")
        conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders()
        conn.send(body[: len(body) // 2])  # the request is running: half its body is in
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        time.sleep(3)  # longer than the short grace
        assert proc.poll() is None or not finishes
        with pytest.raises(httpx.ConnectError):  # no new connections once shutting down
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
        if finishes:
            conn.send(body[len(body) // 2 :])
            response = conn.getresponse()
            assert response.status == 200
            assert json.loads(response.read())["input"]["shape"][0] == 5
        else:
            # Cut at the grace: never a hang. service.shutdown answers a clear 503 with the error body
            # when the cancelled request gets to run before the process exits; uvicorn's exit can come
            # first (seen with the h11 front), and then the connection is closed without an answer.
            # (It is read without sending the rest of the body: data sent to the closed socket would
            # reset the connection and drop an answer on the client's side.)
            try:
                response = conn.getresponse()
            except (http.client.RemoteDisconnected, ConnectionResetError):
                response = None
            if response is not None:
                assert response.status == 503 and response.getheader("Retry-After")
                answer = json.loads(response.read())
                assert answer["code"] == "not_ready" and "shutting down" in answer["message"]
        # uvicorn re-raises the signal once shut down: "terminated by SIGTERM" (143 in Docker).
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
        log = (tmp_path / "serve.log").read_text()
        assert "Waiting for connections to close" in log
    finally:
        conn.close()
        if proc.poll() is None:
            stop_server(proc)
