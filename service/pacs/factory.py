"""Build the configured PACS client."""

from __future__ import annotations

from service.pacs.base import PacsClient
from service.pacs.errors import PacsNotConfiguredError
from service.pacs.settings import PacsSettings


def create_pacs_client(settings: PacsSettings | None = None) -> PacsClient:
    """The client ``settings.protocol`` names (settings read from ``MSDN_PACS_*`` when not given).

    Raises:
        PacsNotConfiguredError: ``protocol`` is ``none``.
    """
    settings = settings if settings is not None else PacsSettings()
    if settings.protocol == "dicomweb":
        from service.pacs.dicomweb import DicomwebPacsClient

        return DicomwebPacsClient(settings)
    if settings.protocol == "dimse":
        from service.pacs.dimse import DimsePacsClient

        return DimsePacsClient(settings)
    raise PacsNotConfiguredError("no PACS configured: set MSDN_PACS_PROTOCOL to dicomweb or dimse")
