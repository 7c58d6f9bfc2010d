"""Build the configured PACS client."""

from __future__ import annotations

from service.pacs.base import PacsClient
from service.pacs.errors import PacsNotConfiguredError
from service.pacs.settings import PacsSettings


def create_pacs_client(settings: PacsSettings | None = None, *, receiver=None) -> PacsClient:
    """The client ``settings.protocol`` names (settings read from ``MSDN_PACS_*`` when not given).

    Args:
        settings: PACS settings.
        receiver: a running :class:`~service.pacs.scp.StorageReceiver` the DIMSE client shares for
            C-MOVE (when the push listener already listens on the storage port).

    Raises:
        PacsNotConfiguredError: ``protocol`` is ``none``.
    """
    settings = settings if settings is not None else PacsSettings()
    if settings.protocol == "dicomweb":
        from service.pacs.dicomweb import DicomwebPacsClient

        return DicomwebPacsClient(settings)
    if settings.protocol == "dimse":
        from service.pacs.dimse import DimsePacsClient

        return DimsePacsClient(settings, receiver=receiver)
    raise PacsNotConfiguredError("no PACS configured: set MSDN_PACS_PROTOCOL to dicomweb or dimse")
