"""docker/orthanc/orthanc.json works with a real Orthanc: password from the environment, DICOMweb on,
our AE allowed, strangers refused (ports and storage are moved to free local ones)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import SecretStr

from service.pacs import (
    AssociationAbortedError,
    AssociationRejectedError,
    PacsAuthError,
    PacsSettings,
    create_pacs_client,
)
from tests.service.pacs.orthanc_server import OrthancServer, require_orthanc

pytestmark = pytest.mark.orthanc
CONFIG = Path(__file__).resolve().parents[2] / "docker" / "orthanc" / "orthanc.json"


@pytest.fixture(scope="module")
def compose_orthanc(tmp_path_factory):
    require_orthanc()
    server = OrthancServer(
        tmp_path_factory.mktemp("compose-orthanc"),
        password="from-the-env",
        base_config=json.loads(CONFIG.read_text()),
        env={"ORTHANC_PASSWORD": "from-the-env"},
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _settings(server: OrthancServer, **overrides) -> PacsSettings:
    values = {
        "protocol": "dicomweb",
        "dicomweb_url": server.dicomweb_url,
        "dicomweb_auth": "basic",
        "dicomweb_username": "msdn",
        "dicomweb_password": "from-the-env",
        "ae_title": "MSDN",
        "peer_ae_title": "ORTHANC",
        "peer_port": server.dicom_port,
        "dicomweb_max_attempts": 1,
        # generous: on a loaded 2-core box Orthanc's first association answer has taken over 10 s
        "acse_timeout_s": 30,
    }
    values.update(overrides)
    return PacsSettings(**values)


def test_dicomweb_with_the_password_from_the_environment(compose_orthanc):
    create_pacs_client(_settings(compose_orthanc)).echo()
    with pytest.raises(PacsAuthError):
        create_pacs_client(_settings(compose_orthanc, dicomweb_password=SecretStr("${ORTHANC_PASSWORD}"))).echo()


def test_dimse_our_ae_allowed_strangers_refused(compose_orthanc):
    create_pacs_client(_settings(compose_orthanc, protocol="dimse")).echo()
    refused = (AssociationRejectedError, AssociationAbortedError)  # see tests/service/pacs/test_errors.py
    with pytest.raises(refused, match="Calling AE title not recognised|closed the connection.*'STRANGER'"):
        create_pacs_client(_settings(compose_orthanc, protocol="dimse", ae_title="STRANGER")).echo()
