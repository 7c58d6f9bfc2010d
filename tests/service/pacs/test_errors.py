"""Error paths: each failure is a domain exception with a message an operator can act on."""

from __future__ import annotations

import time

import pytest
from pydantic import SecretStr

from service.pacs import (
    AssociationAbortedError,
    AssociationRejectedError,
    PacsAuthError,
    PacsOperationError,
    PacsTimeoutError,
    PacsUnreachableError,
    create_pacs_client,
)
from tests.service.pacs.orthanc_server import free_port
from tests.service.pacs.silent_server import SilentServer

pytestmark = pytest.mark.orthanc


# --- DICOMweb ---------------------------------------------------------------------------------


def test_dicomweb_wrong_port_is_unreachable(dicomweb_settings):
    port = free_port()
    url = f"http://127.0.0.1:{port}/dicom-web"
    client = create_pacs_client(dicomweb_settings.model_copy(update={"dicomweb_url": url}))
    with pytest.raises(PacsUnreachableError, match=f"cannot connect to DICOMweb {url}.*refused"):
        client.echo()


def test_dicomweb_wrong_password_is_an_auth_error(dicomweb_settings):
    client = create_pacs_client(dicomweb_settings.model_copy(update={"dicomweb_password": SecretStr("wrong")}))
    with pytest.raises(PacsAuthError, match="HTTP 401") as info:
        client.echo()
    assert "wrong" not in str(info.value)  # never echo a credential


def test_dicomweb_missing_credentials_is_an_auth_error(dicomweb_settings):
    client = create_pacs_client(dicomweb_settings.model_copy(update={"dicomweb_auth": "none"}))
    with pytest.raises(PacsAuthError, match="refused our credentials"):
        client.find_studies()


def test_dicomweb_silent_peer_times_out():
    from service.pacs.settings import PacsSettings

    with SilentServer() as silent:
        settings = PacsSettings(
            protocol="dicomweb",
            dicomweb_url=f"http://127.0.0.1:{silent.port}/dicom-web",
            network_timeout_s=0.5,
            dicomweb_max_attempts=1,
        )
        client = create_pacs_client(settings)
        start = time.monotonic()
        with pytest.raises(PacsTimeoutError, match="did not answer within"):
            client.echo()
        assert time.monotonic() - start < 5


def test_dicomweb_wrong_root_is_an_operation_error(dicomweb_settings, orthanc):
    client = create_pacs_client(dicomweb_settings.model_copy(update={"dicomweb_url": f"{orthanc.url}/no-such-root"}))
    with pytest.raises(PacsOperationError, match="HTTP 404"):
        client.echo()


# --- DIMSE ------------------------------------------------------------------------------------


def test_dimse_wrong_port_is_unreachable(dimse_settings):
    client = create_pacs_client(dimse_settings.model_copy(update={"peer_port": free_port()}))
    with pytest.raises(PacsUnreachableError, match="cannot connect to DICOM ORTHANC@127.0.0.1"):
        client.echo()


def test_dimse_unknown_calling_ae_is_rejected(dimse_settings):
    client = create_pacs_client(dimse_settings.model_copy(update={"ae_title": "INTRUDER"}))
    # Orthanc sends A-ASSOCIATE-RJ and drops the connection; when the drop wins the race the client
    # reports the early close (naming our AE) instead of the decoded reason.
    refused = (AssociationRejectedError, AssociationAbortedError)
    with pytest.raises(refused, match="Calling AE title not recognised.*'INTRUDER'|closed the connection.*'INTRUDER'"):
        client.echo()


def test_dimse_wrong_called_ae_is_rejected(dimse_settings):
    client = create_pacs_client(dimse_settings.model_copy(update={"peer_ae_title": "NOT_ORTHANC"}))
    refused = (AssociationRejectedError, AssociationAbortedError)
    with pytest.raises(refused, match="Called AE title not recognised|closed the connection without accepting"):
        client.find_studies()


def test_dimse_silent_peer_times_out(dimse_settings):
    with SilentServer() as silent:
        client = create_pacs_client(dimse_settings.model_copy(update={"peer_port": silent.port, "acse_timeout_s": 0.5}))
        start = time.monotonic()
        with pytest.raises(PacsTimeoutError, match="did not answer the association request within 0.5s"):
            client.echo()
        assert time.monotonic() - start < 5


def test_dimse_move_to_unknown_destination_is_refused(dimse_settings, pacs_series):
    ct5 = pacs_series["ct5"]
    settings = dimse_settings.model_copy(
        update={"retrieve": "c-move", "move_destination_ae": "NOWHERE", "storage_port": free_port()}
    )
    client = create_pacs_client(settings)
    try:
        # Orthanc answers 0xC000 (a standard PACS may answer 0xA801, "move destination unknown").
        with pytest.raises((PacsOperationError, PacsAuthError), match="'NOWHERE'"):
            client.fetch_series(ct5.study_uid, ct5.series_uid)
    finally:
        client.close()
