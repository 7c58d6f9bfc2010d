"""schemathesis with all checks against the PACS routes of a real uvicorn, whose PACS (a real Orthanc)
sits behind a proxy that answers every third request 503 (Retry-After) and delays the others.

All checks: documented status codes, content types and schemas (error bodies included), invalid
input refused, missing or wrong API keys refused."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.service.pacs.fault_proxy import FaultProxy
from tests.support.live_server import free_port, start_server, stop_server

pytestmark = pytest.mark.orthanc

API_KEY = "contract-key"


@pytest.fixture(scope="module")
def busy_pacs_server(model_1c, orthanc, pacs_series, tmp_path_factory):
    proxy = FaultProxy(orthanc.url).start()
    proxy.fail("*", "/dicom-web/", times=-1, every=3, retry_after="1")
    proxy.delay_s = 0.05
    port = free_port()
    folder = tmp_path_factory.mktemp("contract")
    env = {
        "MSDN_MODEL_PATH": str(model_1c),
        "MSDN_INTRA_OP_THREADS": "1",
        "MSDN_WARMUP": "false",
        "MSDN_API_KEYS": API_KEY,
        "MSDN_DATA_DIR": str(folder / "data"),
        "MSDN_PACS_PROTOCOL": "dicomweb",
        "MSDN_PACS_DICOMWEB_URL": f"{proxy.url}/dicom-web",
        "MSDN_PACS_DICOMWEB_AUTH": "basic",
        "MSDN_PACS_DICOMWEB_USERNAME": orthanc.username,
        "MSDN_PACS_DICOMWEB_PASSWORD": orthanc.password,
        "MSDN_PACS_DICOMWEB_MAX_ATTEMPTS": "1",
        "MSDN_PACS_IO_DEADLINE_S": "20",
    }
    args = [sys.executable, "-m", "uvicorn", "service.main:app", "--host", "127.0.0.1", "--port", str(port)]
    proc = start_server(args, env, port, folder / "server.log")
    yield f"http://127.0.0.1:{port}", folder / "server.log", proxy
    stop_server(proc)
    proxy.stop()


def test_schemathesis_all_checks_on_the_pacs_routes_with_a_busy_pacs(busy_pacs_server, tmp_path):
    url, log, proxy = busy_pacs_server
    st = shutil.which("st", path=os.path.dirname(sys.executable)) or shutil.which("st")
    assert st, "schemathesis CLI (st) not installed"
    cmd = [
        st,
        "run",
        f"{url}/openapi.json",
        "--checks",
        "all",
        # A busy PACS makes 502/503/504 the right answers; status_code_conformance checks they are
        # declared (tests/service/test_live_server.py runs not_a_server_error with a healthy PACS).
        "--exclude-checks",
        "not_a_server_error",
        "--header",
        f"X-API-Key: {API_KEY}",
        "--include-path-regex",
        "^/v1/pacs",
        "--max-examples",
        "15",
        "--seed",
        "20240601",
        "--workers",
        "1",
        "--phases",
        "examples,coverage,fuzzing",
        "--request-timeout",
        "60",
        "--generation-database",
        "none",
        "--no-color",
    ]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-20000:] + "\n--- server log ---\n" + log.read_text()[-5000:]
    assert "5 selected" in output  # echo, series search, segment, jobs, job
    assert any(status == 503 for _, _, _, status in proxy.log)  # the PACS really answered 503s
