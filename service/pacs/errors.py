"""Domain errors of the PACS clients.

Each carries a message meant for an operator (what failed, against which peer) and an HTTP status the
router answers with; none carries patient data. Upstream failures map to 502/504 (the PACS, not the
caller, is at fault), a missing series to 404.
"""

from __future__ import annotations


class PacsError(Exception):
    """Base class: something went wrong talking to the PACS."""

    #: HTTP status the PACS routes answer with.
    status_code: int = 502

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PacsNotConfiguredError(PacsError):
    """No PACS is configured (``MSDN_PACS_PROTOCOL=none``)."""

    status_code = 503


class PacsUnreachableError(PacsError):
    """The peer could not be reached (connection refused, DNS failure, no route)."""

    status_code = 502


class PacsTimeoutError(PacsError):
    """The peer did not answer in time."""

    status_code = 504


class AssociationRejectedError(PacsError):
    """The peer rejected the DICOM association (unknown calling/called AE title, no shared context)."""

    status_code = 502


class AssociationAbortedError(PacsError):
    """The association was aborted (A-ABORT / A-P-ABORT) before the operation finished."""

    status_code = 502


class PacsAuthError(PacsError):
    """The PACS refused our credentials (HTTP 401/403, DIMSE refused as not authorised)."""

    status_code = 502


class SeriesNotFoundError(PacsError):
    """The PACS has no such study/series (or no instances in it)."""

    status_code = 404


class SeriesTooLargeError(PacsError):
    """The series exceeds ``max_instances`` or ``max_series_bytes``."""

    status_code = 413


class PacsOperationError(PacsError):
    """The peer answered but the operation failed (a failure status, an HTTP error)."""

    status_code = 502


class StoreFailedError(PacsOperationError):
    """The PACS did not accept (all) the instances we sent."""
