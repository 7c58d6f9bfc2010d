"""Domain errors of the PACS clients.

Each carries a message meant for an operator (what failed, against which peer), the stable
:class:`~msdn_core.errors.ErrorCode` the routes answer with (and so the HTTP status), whether a retry
may help (:attr:`PacsError.transient`), and the peer's ``Retry-After`` when it sent one; none carries
patient data. Upstream failures map to 502 (``pacs_unavailable``, ``pacs_refused``, ``pacs_error``),
503 (``pacs_busy``: the PACS answered 429/503 or out of resources; ``pacs_not_configured``) and 504
(``pacs_timeout``); a missing series to 404 (``series_not_found``), an oversized one to 413.
"""

from __future__ import annotations

from typing import Optional

from msdn_core.errors import ErrorCode

#: HTTP statuses of a busy peer (a retry later may succeed).
BUSY_HTTP_STATUSES = (429, 503)
#: HTTP statuses worth a retry.
TRANSIENT_HTTP_STATUSES = (429, 500, 502, 503, 504)


class PacsError(Exception):
    """Base class: something went wrong talking to the PACS.

    Args:
        message: what failed, against which peer.
        retry_after_s: the peer's Retry-After, when it sent one.
        http_status: the peer's HTTP status (DICOMweb) when it answered one.
        dimse_status: the peer's DIMSE status when it answered one.
    """

    code: ErrorCode = ErrorCode.PACS_ERROR
    #: whether the same request may succeed later
    transient: bool = False

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: Optional[float] = None,
        http_status: Optional[int] = None,
        dimse_status: Optional[int] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s
        self.http_status = http_status
        self.dimse_status = dimse_status

    @property
    def status_code(self) -> int:
        """HTTP status the PACS routes answer with."""
        return self.error_code.status

    @property
    def error_code(self) -> ErrorCode:
        return self.code

    def __str__(self) -> str:
        return self.message


class PacsNotConfiguredError(PacsError):
    """No PACS is configured (``MSDN_PACS_PROTOCOL=none``)."""

    code = ErrorCode.PACS_NOT_CONFIGURED


class PacsUnreachableError(PacsError):
    """The peer could not be reached (connection refused, DNS failure, no route)."""

    code = ErrorCode.PACS_UNAVAILABLE
    transient = True


class PacsTimeoutError(PacsError):
    """The peer did not answer in time."""

    code = ErrorCode.PACS_TIMEOUT
    transient = True


class AssociationRejectedError(PacsError):
    """The peer rejected the DICOM association (unknown calling/called AE title, no shared context)."""

    code = ErrorCode.PACS_REFUSED
    transient = True  # a peer over its association limit rejects too; a config fix may follow


class AssociationAbortedError(PacsError):
    """The association was aborted (A-ABORT / A-P-ABORT) before the operation finished."""

    code = ErrorCode.PACS_UNAVAILABLE
    transient = True


class PacsAuthError(PacsError):
    """The PACS refused our credentials (HTTP 401/403, DIMSE refused as not authorised)."""

    code = ErrorCode.PACS_REFUSED


class SeriesNotFoundError(PacsError):
    """The PACS has no such study/series (or no instances in it)."""

    code = ErrorCode.SERIES_NOT_FOUND


class SeriesTooLargeError(PacsError):
    """The series exceeds ``max_instances`` or ``max_series_bytes``."""

    code = ErrorCode.SERIES_TOO_LARGE


class PacsOperationError(PacsError):
    """The peer answered but the operation failed (a failure status, an HTTP error)."""

    @property
    def error_code(self) -> ErrorCode:
        if self.http_status in BUSY_HTTP_STATUSES or (self.dimse_status or 0) & 0xFF00 == 0xA700:
            return ErrorCode.PACS_BUSY
        return self.code

    @property
    def transient(self) -> bool:  # type: ignore[override]
        return self.http_status in TRANSIENT_HTTP_STATUSES or (self.dimse_status or 0) & 0xFF00 == 0xA700


class StoreFailedError(PacsOperationError):
    """The PACS did not accept (all) the instances we sent."""


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the operation that raised ``exc`` may succeed."""
    return isinstance(exc, PacsError) and bool(exc.transient)
