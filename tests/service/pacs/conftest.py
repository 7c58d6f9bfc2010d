"""Fixtures: one real Orthanc (DICOMweb + DIMSE) for the PACS tests, loaded with pydicom's test files.

Orthanc missing: the tests fail when ``CI`` is set or ``MSDN_REQUIRE_ORTHANC=1`` (CI installs it with
scripts/install_orthanc.sh), and are skipped with the reason otherwise.
"""

from __future__ import annotations

import os

import pytest

from tests.service.conftest import OUR_AE, TestSeries  # noqa: F401
from tests.service.pacs.orthanc_server import OrthancServer


@pytest.fixture
def dicomweb_settings(orthanc: OrthancServer):
    from service.pacs.settings import PacsSettings

    return PacsSettings(
        protocol="dicomweb",
        dicomweb_url=orthanc.dicomweb_url,
        dicomweb_auth="basic",
        dicomweb_username=orthanc.username,
        dicomweb_password=orthanc.password,
        connect_timeout_s=5,
        network_timeout_s=30,
    )


@pytest.fixture
def dimse_settings(orthanc: OrthancServer):
    from service.pacs.settings import PacsSettings

    return PacsSettings(
        protocol="dimse",
        ae_title=OUR_AE,
        peer_ae_title=orthanc.aet,
        peer_host="127.0.0.1",
        peer_port=orthanc.dicom_port,
        storage_host="127.0.0.1",
        storage_port=orthanc.scp_port,
        connect_timeout_s=5,
        acse_timeout_s=10,
        dimse_timeout_s=30,
        network_timeout_s=30,
    )


@pytest.fixture(params=["dicomweb", "dimse-c-get", "dimse-c-move"])
def pacs_settings(request, dicomweb_settings, dimse_settings):
    """Settings for each way of talking to the PACS."""
    if request.param == "dicomweb":
        return dicomweb_settings
    retrieve = request.param.removeprefix("dimse-")
    return dimse_settings.model_copy(update={"retrieve": retrieve})


@pytest.fixture
def pacs_client(pacs_settings):
    from service.pacs.factory import create_pacs_client

    client = create_pacs_client(pacs_settings)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(autouse=True)
def _clean_pacs_environment(monkeypatch, tmp_path):
    """Tests see only the MSDN_PACS_* variables they set themselves, and a fresh MSDN_DATA_DIR."""
    for name in list(os.environ):
        if name.startswith("MSDN_PACS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MSDN_DATA_DIR", str(tmp_path / "msdn-data"))
