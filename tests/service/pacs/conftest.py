"""Fixtures: one real Orthanc (DICOMweb + DIMSE) for the PACS tests, loaded with pydicom's test files.

Orthanc missing: the tests fail when ``CI`` is set or ``MSDN_REQUIRE_ORTHANC=1`` (CI installs it with
scripts/install_orthanc.sh), and are skipped with the reason otherwise.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

from tests.service.pacs.orthanc_server import OrthancServer, free_port, require_orthanc

#: Our AE title as the PACS knows it (DicomModalities entry "msdn").
OUR_AE = "MSDN"


@dataclass
class TestSeries:
    """A series uploaded to Orthanc, with the original files (the independent path)."""

    name: str
    files: list[Path]

    @property
    def datasets(self) -> list[pydicom.Dataset]:
        return [pydicom.dcmread(f) for f in self.files]

    @property
    def study_uid(self) -> str:
        return str(pydicom.dcmread(self.files[0], stop_before_pixels=True).StudyInstanceUID)

    @property
    def series_uid(self) -> str:
        return str(pydicom.dcmread(self.files[0], stop_before_pixels=True).SeriesInstanceUID)


def _test_files() -> dict[str, list[Path]]:
    root = Path(get_testdata_file("CT_small.dcm")).parent
    return {
        "ct5": sorted((root / "dicomdirtests" / "98892001" / "CT5N").iterdir()),
        "ct_small": [root / "CT_small.dcm"],
        "mr_small": [root / "MR_small.dcm"],
        "ct_j2k": [root / "693_J2KI.dcm"],  # 512 x 512 CT, JPEG 2000
    }


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory) -> OrthancServer:
    """A running Orthanc on free local ports; knows AE ``MSDN`` at 127.0.0.1:``orthanc.scp_port``."""
    require_orthanc()
    scp_port = free_port()
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"), modalities={"msdn": (OUR_AE, "127.0.0.1", scp_port)})
    server.scp_port = scp_port  # type: ignore[attr-defined]
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def pacs_series(orthanc: OrthancServer) -> dict[str, TestSeries]:
    """pydicom's test series, uploaded to Orthanc through its REST API."""
    series = {}
    for name, files in _test_files().items():
        for path in files:
            answer = orthanc.upload_file(path)
            assert answer["Status"] in ("Success", "AlreadyStored"), answer
        series[name] = TestSeries(name, files)
    return series


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
def _clean_pacs_environment(monkeypatch):
    """Tests see only the MSDN_PACS_* variables they set themselves."""
    for name in list(os.environ):
        if name.startswith("MSDN_PACS_"):
            monkeypatch.delenv(name)
