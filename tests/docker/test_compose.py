"""docker-compose.yml: services, API keys on, healthchecks, PACS wiring consistent with Orthanc's config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from service.pacs.settings import PacsSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
ORTHANC_CONFIG = ROOT / "docker" / "orthanc" / "orthanc.json"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def orthanc_config() -> dict:
    return json.loads(ORTHANC_CONFIG.read_text())


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {key: str(value) for key, value in env.items()}


def _substitute(value: str, variables: dict[str, str]) -> str:
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR:?error} with ``variables``."""

    def repl(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in variables:
            return variables[name]
        if op == ":-":
            return arg
        raise KeyError(f"{name} is required: {arg}")

    return re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", repl, value)


def test_services_network_and_volumes(compose):
    assert {"msdn", "orthanc"} <= set(compose["services"])
    msdn, orthanc = compose["services"]["msdn"], compose["services"]["orthanc"]
    assert msdn["build"]["dockerfile"] == "docker/Dockerfile"
    assert msdn["networks"] == orthanc["networks"] == ["pacs"]
    assert "pacs" in compose["networks"]
    assert any(v.endswith(":/models:ro") for v in msdn["volumes"])
    assert any(v.startswith("orthanc-db:") for v in orthanc["volumes"])
    assert "orthanc-db" in compose["volumes"]
    assert msdn["depends_on"]["orthanc"]["condition"] == "service_healthy"
    # Published on the loopback interface only.
    for service in (msdn, orthanc):
        assert all(str(p).startswith("127.0.0.1:") for p in service["ports"])


def test_api_keys_are_required(compose):
    env = _env(compose["services"]["msdn"])
    assert re.fullmatch(r"\$\{MSDN_API_KEYS:\?[^}]+\}", env["MSDN_API_KEYS"])  # compose refuses to start without
    with pytest.raises(KeyError, match="MSDN_API_KEYS"):
        _substitute(env["MSDN_API_KEYS"], {})
    example = (ROOT / ".env.example").read_text()
    assert re.search(r"^MSDN_API_KEYS=\S+", example, re.MULTILINE)
    assert re.search(r"^ORTHANC_PASSWORD=\S+", example, re.MULTILINE)
    assert {".env", "/.env"} & set((ROOT / ".gitignore").read_text().split())  # never committed


@pytest.mark.parametrize("name", ["msdn", "orthanc"])
def test_healthchecks(compose, name):
    check = compose["services"][name]["healthcheck"]
    assert check["test"][0] in ("CMD", "CMD-SHELL")
    assert {"interval", "timeout", "retries"} <= set(check)
    if name == "msdn":
        assert "/healthz" in " ".join(check["test"])


def test_pacs_environment_is_valid_settings(compose, monkeypatch):
    """Every MSDN_PACS_* variable of the compose file is a real setting, and together they validate."""
    env = _env(compose["services"]["msdn"])
    variables = {"ORTHANC_PASSWORD": "pw", "MSDN_API_KEYS": '["k"]'}
    pacs_env = {k: _substitute(v, variables) for k, v in env.items() if k.startswith("MSDN_PACS_")}
    fields = {f"MSDN_PACS_{name.upper()}" for name in PacsSettings.model_fields}
    assert set(pacs_env) <= fields, set(pacs_env) - fields
    for key, value in pacs_env.items():
        monkeypatch.setenv(key, value)
    settings = PacsSettings()
    assert settings.protocol == "dicomweb"
    assert settings.dicomweb_password.get_secret_value() == "pw"


def test_pacs_settings_match_the_orthanc_config(compose, orthanc_config):
    env = _env(compose["services"]["msdn"])
    assert env["MSDN_PACS_DICOMWEB_URL"] == f"http://orthanc:{orthanc_config['HttpPort']}/dicom-web"
    assert orthanc_config["DicomWeb"]["Root"] == "/dicom-web/"
    assert int(env["MSDN_PACS_PEER_PORT"]) == orthanc_config["DicomPort"]
    assert env["MSDN_PACS_PEER_AE_TITLE"] == orthanc_config["DicomAet"]
    ours = orthanc_config["DicomModalities"]["msdn"]
    assert ours["AET"] == env["MSDN_PACS_AE_TITLE"]
    assert ours["Host"] == "msdn" and ours["Port"] == int(env["MSDN_PACS_STORAGE_PORT"])
    assert orthanc_config["AuthenticationEnabled"] is True
    assert orthanc_config["RegisteredUsers"] == {env["MSDN_PACS_DICOMWEB_USERNAME"]: "${ORTHANC_PASSWORD}"}
    orthanc_service = compose["services"]["orthanc"]
    assert any(v.endswith(":/etc/msdn-orthanc/orthanc.json:ro") for v in orthanc_service["volumes"])
    assert orthanc_service["command"] == ["/etc/msdn-orthanc/orthanc.json"]


GPU_COMPOSE = ROOT / "docker-compose.gpu.yml"


def test_model_path_is_one_setting_defaulting_to_what_models_ships(compose):
    msdn = compose["services"]["msdn"]
    env = _env(msdn)
    assert re.fullmatch(r"\$\{MSDN_MODEL_PATH:-/models/[\w.-]+\.onnx\}", env["MSDN_MODEL_PATH"])
    default = _substitute(env["MSDN_MODEL_PATH"], {})
    volume = next(v for v in msdn["volumes"] if v.endswith(":/models:ro"))
    host_dir = ROOT / _substitute(volume.rsplit(":", 2)[0], {}).removeprefix("./")
    model = host_dir / Path(default).relative_to("/models")
    assert model.is_file() and model.with_suffix(".card.json").is_file(), model
    example = (ROOT / ".env.example").read_text()
    assert f"MSDN_MODEL_PATH={default}" in example.splitlines()


def test_service_environment_is_valid_settings(compose, monkeypatch):
    """Every non-PACS MSDN_* variable of the compose file is a real setting and validates."""
    from service.settings import Settings

    env = _env(compose["services"]["msdn"])
    variables = {"ORTHANC_PASSWORD": "pw", "MSDN_API_KEYS": '["k"]'}
    fields = {f"MSDN_{name.upper()}" for name in Settings.model_fields}
    ours = {k: _substitute(v, variables) for k, v in env.items() if k.startswith("MSDN_") and "_PACS_" not in k}
    assert set(ours) <= fields, set(ours) - fields
    settings = Settings(_env_file=None, **{k.removeprefix("MSDN_").lower(): v for k, v in ours.items()})
    assert settings.providers == ["cpu"] and settings.api_keys == ["k"]
    assert settings.shutdown_timeout_s == 60


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", value)
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def test_failed_model_does_not_crash_loop_and_shutdown_is_graceful(compose):
    msdn = compose["services"]["msdn"]
    assert msdn["restart"].startswith("on-failure:")  # `msdn serve` exits 2 on a model that cannot load
    shutdown = float(_substitute(_env(msdn)["MSDN_SHUTDOWN_TIMEOUT_S"], {}))
    assert _seconds(msdn["stop_grace_period"]) > shutdown  # requests finish before Docker's SIGKILL
    assert msdn["init"] is True
    assert "deploy" not in msdn and "runtime" not in msdn  # the CPU default needs no NVIDIA toolkit
    assert msdn["build"]["target"] == "runtime"


def test_gpu_override_requests_the_device():
    gpu = yaml.safe_load(GPU_COMPOSE.read_text())["services"]["msdn"]
    assert gpu["build"]["target"] == "gpu"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices and devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    env = _env(gpu)
    assert _substitute(env["MSDN_PROVIDERS"], {}) in ("cuda", "tensorrt", "auto")
    assert env["CUDA_CACHE_PATH"].startswith("/cache/") and env["MSDN_TENSORRT_CACHE_DIR"].startswith("/cache/")
    assert "msdn-cache:/cache" in gpu["volumes"]
    assert "msdn-cache" in yaml.safe_load(GPU_COMPOSE.read_text())["volumes"]
