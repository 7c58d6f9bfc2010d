"""Logging under a plain ``uvicorn service.main:app`` (as in the Docker image): MSDN_LOG_LEVEL is obeyed."""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path

import httpx
import pytest

from service.logs import LOGGERS, configure_logging
from tests.support.live_server import free_port, start_server, stop_server
from tests.support.onnx_models import threshold_model

LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) (service\.[\w.]+) (.+)$")


def _serve(tmp_path: Path, level: str) -> list[tuple[str, str, str]]:
    model = tmp_path / "m.onnx"
    if not model.exists():
        threshold_model(model, thresholds_hu=(0.0,), classes=["tissue"], std=100.0)
    port = free_port()
    log = tmp_path / f"{level}.log"
    env = {"MSDN_MODEL_PATH": str(model), "MSDN_LOG_LEVEL": level, "MSDN_PROVIDERS": "CPUExecutionProvider"}
    args = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port)]
    proc = start_server(args, env, port, log)
    try:
        assert httpx.get(f"http://127.0.0.1:{port}/v1/nowhere", timeout=10).status_code in (401, 404)
    finally:
        stop_server(proc)
    return [m.groups() for m in map(LINE.match, log.read_text().splitlines()) if m]


def test_msdn_log_level_works_under_plain_uvicorn(tmp_path):
    info = _serve(tmp_path, "info")
    loaded = [m for level, name, m in info if level == "INFO" and name == "service.model" and "loaded from" in m]
    assert loaded, info  # time, level, logger, message
    quiet = _serve(tmp_path, "warning")
    assert not [r for r in quiet if r[0] in ("DEBUG", "INFO")]


def test_configure_logging_sets_levels_and_refuses_unknown_names():
    before = {n: logging.getLogger(n).level for n in LOGGERS}
    try:
        configure_logging("debug")
        assert all(logging.getLogger(n).level == logging.DEBUG for n in LOGGERS)
        configure_logging("WARNING")
        assert all(logging.getLogger(n).level == logging.WARNING for n in LOGGERS)
        with pytest.raises(ValueError, match="log_level"):
            configure_logging("chatty")
    finally:
        for name, level in before.items():
            logging.getLogger(name).setLevel(level)
