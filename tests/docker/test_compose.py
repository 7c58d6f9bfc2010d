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
