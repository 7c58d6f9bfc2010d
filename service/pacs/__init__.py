"""PACS integration: DICOMweb and DIMSE clients behind one interface, an HTTP router, a Storage SCP.

Torch-free. Pick the protocol with ``MSDN_PACS_PROTOCOL`` (see :class:`PacsSettings`) and get a client
with :func:`create_pacs_client`. ``router`` holds the ``/v1/pacs`` routes (the service app includes it
when this package is installed; see ``service.pacs.router``).
"""

from service.pacs.base import PacsClient, SeriesInfo, StoreResult, StudyInfo
from service.pacs.errors import (
    AssociationAbortedError,
    AssociationRejectedError,
    PacsAuthError,
    PacsError,
    PacsNotConfiguredError,
    PacsOperationError,
    PacsTimeoutError,
    PacsUnreachableError,
    SeriesNotFoundError,
    SeriesTooLargeError,
    StoreFailedError,
)
from service.pacs.factory import create_pacs_client
from service.pacs.router import router
from service.pacs.settings import PacsSettings

__all__ = [
    "AssociationAbortedError",
    "AssociationRejectedError",
    "PacsAuthError",
    "PacsClient",
    "PacsError",
    "PacsNotConfiguredError",
    "PacsOperationError",
    "PacsSettings",
    "PacsTimeoutError",
    "PacsUnreachableError",
    "SeriesInfo",
    "SeriesNotFoundError",
    "SeriesTooLargeError",
    "StoreFailedError",
    "StoreResult",
    "StudyInfo",
    "create_pacs_client",
    "router",
]
