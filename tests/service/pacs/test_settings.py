"""PacsSettings from the environment, its validation, and the client it selects."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from service.pacs import PacsNotConfiguredError, PacsSettings, create_pacs_client
from service.pacs.dicomweb import DicomwebPacsClient
from service.pacs.dimse import DimsePacsClient


def test_defaults_are_off():
    settings = PacsSettings()
    assert settings.protocol == "none"
    with pytest.raises(PacsNotConfiguredError, match="MSDN_PACS_PROTOCOL"):
        create_pacs_client(settings)


def test_dimse_from_environment(monkeypatch):
    monkeypatch.setenv("MSDN_PACS_PROTOCOL", "dimse")
    monkeypatch.setenv("MSDN_PACS_AE_TITLE", "MSDN_AI")
    monkeypatch.setenv("MSDN_PACS_PEER_AE_TITLE", "PACS1")
    monkeypatch.setenv("MSDN_PACS_PEER_HOST", "pacs.example.org")
    monkeypatch.setenv("MSDN_PACS_PEER_PORT", "104")
    monkeypatch.setenv("MSDN_PACS_RETRIEVE", "c-move")
    monkeypatch.setenv("MSDN_PACS_LISTENER_ALLOWED_AES", '["CT1", "MR2"]')
    settings = PacsSettings()
    assert (settings.ae_title, settings.peer_ae_title, settings.peer_host, settings.peer_port) == (
        "MSDN_AI",
        "PACS1",
        "pacs.example.org",
        104,
    )
    assert settings.move_destination == "MSDN_AI"
    assert settings.listener_allowed_aes == ["CT1", "MR2"]
    client = create_pacs_client(settings)
    assert isinstance(client, DimsePacsClient)
    assert client.describe() == "DICOM PACS1@pacs.example.org:104"


def test_dicomweb_bearer_session(monkeypatch):
    monkeypatch.setenv("MSDN_PACS_PROTOCOL", "dicomweb")
    monkeypatch.setenv("MSDN_PACS_DICOMWEB_URL", "https://pacs.example.org/dicom-web/")
    monkeypatch.setenv("MSDN_PACS_DICOMWEB_AUTH", "bearer")
    monkeypatch.setenv("MSDN_PACS_DICOMWEB_TOKEN", "tok-123")
    settings = PacsSettings()
    assert settings.dicomweb_url == "https://pacs.example.org/dicom-web"
    assert "tok-123" not in repr(settings)  # secrets stay hidden in reprs and logs
    client = create_pacs_client(settings)
    assert isinstance(client, DicomwebPacsClient)
    assert client._session.headers["Authorization"] == "Bearer tok-123"
    assert client.describe() == "DICOMweb https://pacs.example.org/dicom-web"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"protocol": "dicomweb"}, "MSDN_PACS_DICOMWEB_URL is required"),
        ({"dicomweb_url": "ftp://x"}, "must start with http"),
        (
            {"dicomweb_auth": "basic", "dicomweb_username": "u"},
            "needs dicomweb_username and dicomweb_password",
        ),
        ({"dicomweb_auth": "bearer"}, "needs dicomweb_token"),
        ({"ae_title": "A" * 17}, "ae_title"),
        ({"peer_ae_title": "BAD\\AE"}, "peer_ae_title"),
        ({"peer_port": 0}, "peer_port"),
        ({"max_instances": 0}, "max_instances"),
        ({"retrieve": "c-push"}, "retrieve"),
        ({"acse_timeout_s": 0}, "acse_timeout_s"),
    ],
)
def test_invalid_settings_name_the_field(kwargs, message):
    with pytest.raises(ValidationError, match=message.replace("\\", "\\\\")):
        PacsSettings(**kwargs)
