"""The one error vocabulary of msdn: stable codes, each with the HTTP status it is answered with.

Readers, the crop policy, metrics and the PACS clients raise :class:`MsdnError` subclasses carrying an
:class:`ErrorCode`; the service maps them to ``{"code", "message", "detail"}`` answers in one place
(``service.errors``), the CLI prints them, the training data checks report them per case. The codes
are part of the HTTP contract: never rename one, add new ones at the end of their group.
"""

from __future__ import annotations

import enum
from typing import Any


class ErrorCode(str, enum.Enum):
    """Stable machine-readable error codes. ``value`` is the wire name, :attr:`status` the HTTP status."""

    # 401 / 403 / 404 / 406 / 408 / 431
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    NOT_ACCEPTABLE = "not_acceptable"
    BODY_TIMEOUT = "body_timeout"
    HEADERS_TOO_LARGE = "headers_too_large"
    # 413: over a configured limit
    LIMIT_EXCEEDED = "limit_exceeded"
    UPLOAD_TOO_LARGE = "upload_too_large"
    TOO_MANY_FILES = "too_many_files"
    TOO_MANY_SLICES = "too_many_slices"
    TOO_MANY_VOXELS = "too_many_voxels"
    ZIP_TOO_LARGE = "zip_too_large"
    ZIP_RATIO = "zip_ratio"
    TOO_MANY_BOXES = "too_many_boxes"
    SERIES_TOO_LARGE = "series_too_large"
    # 422: the content cannot be used
    INVALID_INPUT = "invalid_input"
    INVALID_REQUEST = "invalid_request"
    NO_INPUT = "no_input"
    NOT_DICOM = "not_dicom"
    NO_PIXEL_DATA = "no_pixel_data"
    UNSUPPORTED_TRANSFER_SYNTAX = "unsupported_transfer_syntax"
    UNSUPPORTED_IMAGE = "unsupported_image"
    PIXEL_DATA_INVALID = "pixel_data_invalid"
    MISSING_ATTRIBUTE = "missing_attribute"
    MIXED_SERIES = "mixed_series"
    MIXED_INSTANCES = "mixed_instances"
    INCONSISTENT_GEOMETRY = "inconsistent_geometry"
    MODALITY_NOT_ALLOWED = "modality_not_allowed"
    INVALID_BOXES = "invalid_boxes"
    REFERENCE_MISMATCH = "reference_mismatch"
    INVALID_REFERENCE = "invalid_reference"
    INVALID_VOLUME = "invalid_volume"
    INVALID_SPACING = "invalid_spacing"
    SPACING_REQUIRED = "spacing_required"
    UNSAFE_ZIP = "unsafe_zip"
    INVALID_ZIP = "invalid_zip"
    ZIP_PATH_TRAVERSAL = "zip_path_traversal"
    ZIP_SYMLINK = "zip_symlink"
    ZIP_ENCRYPTED = "zip_encrypted"
    FORMAT_NEEDS_DICOM = "format_needs_dicom"
    INVALID_FORMAT = "invalid_format"
    INVALID_MODE = "invalid_mode"
    # 500
    INTERNAL_ERROR = "internal_error"
    # 502 / 503 / 504: the service or an upstream PACS
    PACS_UNAVAILABLE = "pacs_unavailable"
    PACS_REFUSED = "pacs_refused"
    PACS_ERROR = "pacs_error"
    PACS_TIMEOUT = "pacs_timeout"
    PACS_NOT_CONFIGURED = "pacs_not_configured"
    SERIES_NOT_FOUND = "series_not_found"
    OVERLOADED = "overloaded"
    NOT_READY = "not_ready"
    TIMEOUT = "timeout"
    PACS_BUSY = "pacs_busy"

    @property
    def status(self) -> int:
        """The HTTP status this code is answered with."""
        return _STATUS[self]


_C = ErrorCode
_STATUS: dict[ErrorCode, int] = {
    _C.UNAUTHORIZED: 401,
    _C.NOT_FOUND: 404,
    _C.SERIES_NOT_FOUND: 404,
    _C.NOT_ACCEPTABLE: 406,
    _C.BODY_TIMEOUT: 408,
    _C.HEADERS_TOO_LARGE: 431,
    **{
        c: 413
        for c in (
            _C.LIMIT_EXCEEDED,
            _C.UPLOAD_TOO_LARGE,
            _C.TOO_MANY_FILES,
            _C.TOO_MANY_SLICES,
            _C.TOO_MANY_VOXELS,
            _C.ZIP_TOO_LARGE,
            _C.ZIP_RATIO,
            _C.TOO_MANY_BOXES,
            _C.SERIES_TOO_LARGE,
        )
    },
    _C.INTERNAL_ERROR: 500,
    _C.PACS_UNAVAILABLE: 502,
    _C.PACS_REFUSED: 502,
    _C.PACS_ERROR: 502,
    _C.PACS_TIMEOUT: 504,
    _C.PACS_NOT_CONFIGURED: 503,
    _C.OVERLOADED: 503,
    _C.NOT_READY: 503,
    _C.TIMEOUT: 504,
    _C.PACS_BUSY: 503,
}
for _code in ErrorCode:
    _STATUS.setdefault(_code, 422)


class MsdnError(Exception):
    """Base of every domain error: a stable :class:`ErrorCode`, a message for people, optional detail.

    Subclasses set a default ``code``; a raise site may pass a more specific one (``code=`` accepts
    the enum or its wire name). Messages must not carry patient identifiers.
    """

    code: ErrorCode = ErrorCode.INVALID_INPUT

    def __init__(self, message: str, *, code: ErrorCode | str | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = ErrorCode(code)
        self.detail = detail

    @property
    def status(self) -> int:
        """HTTP status of the answer (from the code)."""
        return self.code.status

    def __str__(self) -> str:
        return self.message


class InvalidInput(MsdnError):
    """The content cannot be used (422)."""

    code = ErrorCode.INVALID_INPUT


class LimitExceeded(MsdnError):
    """Over a configured limit (413)."""

    code = ErrorCode.LIMIT_EXCEEDED
