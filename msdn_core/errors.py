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

    # 401 / 403 / 404 / 405 / 406 / 408 / 431
    UNAUTHORIZED = "unauthorized"
    NOT_FOUND = "not_found"
    NOT_ACCEPTABLE = "not_acceptable"
    METHOD_NOT_ALLOWED = "method_not_allowed"
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
    SEG_NOT_BUILT = "seg_not_built"
    # 409: jobs
    JOB_NOT_DONE = "job_not_done"
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
    _C.JOB_NOT_DONE: 409,
    _C.METHOD_NOT_ALLOWED: 405,
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


# Domain errors with a fixed code (a raise site may still pass a more specific ``code=``).


class NotDicom(InvalidInput):
    code = ErrorCode.NOT_DICOM


class NoPixelData(InvalidInput):
    code = ErrorCode.NO_PIXEL_DATA


class UnsupportedTransferSyntax(InvalidInput):
    code = ErrorCode.UNSUPPORTED_TRANSFER_SYNTAX


class MixedSeries(InvalidInput):
    code = ErrorCode.MIXED_SERIES


class InconsistentGeometry(InvalidInput):
    code = ErrorCode.INCONSISTENT_GEOMETRY


class ModalityNotAllowed(InvalidInput):
    code = ErrorCode.MODALITY_NOT_ALLOWED


class InvalidBoxes(InvalidInput):
    code = ErrorCode.INVALID_BOXES


class ReferenceMismatch(InvalidInput):
    code = ErrorCode.REFERENCE_MISMATCH


class InvalidVolume(InvalidInput):
    code = ErrorCode.INVALID_VOLUME


class UnsafeZip(InvalidInput):
    code = ErrorCode.UNSAFE_ZIP


#: One line per code for the README's table (``python -m msdn_core.errors --markdown``).
DESCRIPTIONS: dict[ErrorCode, str] = {
    _C.UNAUTHORIZED: "no or a wrong API key (`Authorization: Bearer KEY` or `X-API-Key: KEY`)",
    _C.NOT_FOUND: "no such route or resource",
    _C.NOT_ACCEPTABLE: "the `Accept` header asks for a format the service cannot give",
    _C.METHOD_NOT_ALLOWED: "the route does not take this HTTP method",
    _C.BODY_TIMEOUT: "the request body did not arrive within `MSDN_BODY_TIMEOUT_S`",
    _C.HEADERS_TOO_LARGE: "more request headers than `MSDN_MAX_HEADER_COUNT` or bytes than `MSDN_MAX_HEADER_BYTES`",
    _C.LIMIT_EXCEEDED: "over a configured limit",
    _C.UPLOAD_TOO_LARGE: "request body over `MSDN_MAX_UPLOAD_BYTES`",
    _C.TOO_MANY_FILES: "more files than `MSDN_MAX_FILES`",
    _C.TOO_MANY_SLICES: "more slices than `MSDN_MAX_SLICES`",
    _C.TOO_MANY_VOXELS: "more voxels than `MSDN_MAX_VOXELS`",
    _C.ZIP_TOO_LARGE: "a zip whose members add up to more than `MSDN_MAX_ZIP_UNCOMPRESSED_BYTES`",
    _C.ZIP_RATIO: "a zip member compressed more than `MSDN_MAX_ZIP_RATIO`",
    _C.TOO_MANY_BOXES: "more slice boxes than `MSDN_MAX_BOXES`",
    _C.SERIES_TOO_LARGE: "a PACS series over the instance or byte limit",
    _C.INVALID_INPUT: "the content cannot be used",
    _C.INVALID_REQUEST: "form or body validation failed",
    _C.NO_INPUT: "neither (or both) `dicom` files and a `volume`",
    _C.NOT_DICOM: "a file that is not DICOM",
    _C.NO_PIXEL_DATA: "a DICOM instance without pixel data",
    _C.UNSUPPORTED_TRANSFER_SYNTAX: "a transfer syntax that cannot be decoded",
    _C.UNSUPPORTED_IMAGE: "an image kind that cannot be segmented (colour, several samples)",
    _C.PIXEL_DATA_INVALID: "pixel data that cannot be decoded or holds NaN / infinite values",
    _C.MISSING_ATTRIBUTE: "a required DICOM attribute is missing",
    _C.MIXED_SERIES: "instances of several series without `series_uid`",
    _C.MIXED_INSTANCES: "instances of different kinds in one series",
    _C.INCONSISTENT_GEOMETRY: (
        "irregular spacing, mixed orientations, duplicate positions, mixed sizes, gantry tilt over the maximum, "
        "missing PixelSpacing"
    ),
    _C.MODALITY_NOT_ALLOWED: "a modality not in `MSDN_ALLOWED_MODALITIES`",
    _C.INVALID_BOXES: "a malformed `boxes` field or a box outside the volume",
    _C.REFERENCE_MISMATCH: "a reference that does not match the input's grid",
    _C.INVALID_REFERENCE: "a reference that cannot be read",
    _C.INVALID_VOLUME: "a NIfTI / NRRD / .npy volume that cannot be used",
    _C.INVALID_SPACING: "a malformed `spacing` field, or one given for DICOM input",
    _C.SPACING_REQUIRED: "a .npy volume without `spacing`",
    _C.UNSAFE_ZIP: "a zip that is unsafe to unpack",
    _C.INVALID_ZIP: "a zip that cannot be read",
    _C.ZIP_PATH_TRAVERSAL: "a zip member whose path leaves the archive",
    _C.ZIP_SYMLINK: "a zip member that is a symbolic link",
    _C.ZIP_ENCRYPTED: "an encrypted zip member",
    _C.FORMAT_NEEDS_DICOM: "a DICOM SEG answer asked for non-DICOM input",
    _C.INVALID_FORMAT: "an unknown answer format",
    _C.INVALID_MODE: "an unknown mode, or one that does not fit the request or model",
    _C.SEG_NOT_BUILT: "the source series' attributes do not allow a DICOM SEG (the message says which)",
    _C.JOB_NOT_DONE: "the job has no result: it is queued, running or was cancelled (`GET /v1/jobs/{id}`)",
    _C.INTERNAL_ERROR: "a bug; the server log has the details",
    _C.PACS_UNAVAILABLE: "the PACS cannot be reached",
    _C.PACS_REFUSED: "the PACS refused the association or our credentials",
    _C.PACS_ERROR: "the PACS answered with a failure",
    _C.PACS_TIMEOUT: "the PACS did not answer in time",
    _C.PACS_NOT_CONFIGURED: "no (or an invalid) PACS configuration (`MSDN_PACS_*`)",
    _C.SERIES_NOT_FOUND: "the PACS has no such study / series",
    _C.OVERLOADED: "all inference slots and the queue are full (with `Retry-After`)",
    _C.NOT_READY: "no model loaded yet, or no pipeline",
    _C.TIMEOUT: "processing ran past `MSDN_REQUEST_TIMEOUT_S`",
    _C.PACS_BUSY: "the PACS answered 429 / 503, or all PACS workers are busy (with `Retry-After`)",
}


def markdown_table() -> str:
    """The README's table of error codes, generated from :class:`ErrorCode` (status order, then enum order)."""
    lines = ["| status | code | meaning |", "| --- | --- | --- |"]
    order = {code: i for i, code in enumerate(ErrorCode)}
    for code in sorted(ErrorCode, key=lambda c: (c.status, order[c])):
        lines.append(f"| {code.status} | `{code.value}` | {DESCRIPTIONS.get(code, '')} |")
    return "\n".join(lines) + "\n"


def _main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m msdn_core.errors", description="The msdn error codes.")
    parser.add_argument("--markdown", action="store_true", help="print the README's table of codes")
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown_table(), end="")
    else:
        for code in ErrorCode:
            print(f"{code.status} {code.value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
