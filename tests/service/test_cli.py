"""``msdn serve`` (service.cli)."""

from __future__ import annotations

import argparse
import sys

import httpx

from model_export.cli import main
from service import cli
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
