"""The one place that maps errors to HTTP answers.

Domain errors are ``msdn_core.errors.MsdnError`` subclasses (re-exported here): the answer's status is
``exc.code.status`` (``ErrorCode.status``). The HTTP layer's own errors (auth, overload, time limit)
are :class:`ServiceError`, an ``MsdnError`` with headers. PACS client errors reach the answers as
``ErrorCode.PACS_*`` codes (:data:`PACS_CODES`).

Every error answer has the JSON body ``{"code": ..., "message": ..., "detail": ...}`` (``ErrorBody``):
``code`` is a stable machine-readable name, ``message`` says in words what was wrong, ``detail`` is
optional structured context (for example the series found in a mixed upload).
"""

from __future__ import annotations

import logging
from typing import Any, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from msdn_core.errors import (
    ErrorCode,
    InconsistentGeometry,
    InvalidBoxes,
    InvalidInput,
    InvalidVolume,
    LimitExceeded,
    MixedSeries,
    ModalityNotAllowed,
    MsdnError,
    NoPixelData,
    NotDicom,
    ReferenceMismatch,
    UnsafeZip,
    UnsupportedTransferSyntax,
)

logger = logging.getLogger(__name__)

_C4XX = ErrorCode.INVALID_REQUEST

__all__ = [
    "ErrorBody",
    "ErrorCode",
    "InconsistentGeometry",
    "InvalidBoxes",
    "InvalidInput",
    "InvalidVolume",
    "LimitExceeded",
    "MixedSeries",
    "ModalityNotAllowed",
    "ModelLoadError",
    "MsdnError",
    "NoPixelData",
    "NotAcceptable",
    "NotDicom",
    "NotReady",
    "Overloaded",
    "ReferenceMismatch",
    "RequestTimeout",
    "ServiceError",
    "Unauthorized",
    "UnsafeZip",
    "UnsupportedTransferSyntax",
    "error_body",
    "install_error_handlers",
    "pacs_code",
]


class ErrorBody(BaseModel):
    """Body of every error answer."""

    code: str
    message: str
    detail: Optional[Any] = None


class ServiceError(MsdnError):
    """An error of the HTTP layer (auth, overload, time limit): an :class:`MsdnError` with HTTP headers."""

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | str | None = None,
        detail: Any = None,
        headers: Optional[dict[str, str]] = None,
    ) -> None:
        super().__init__(message, code=code, detail=detail)
        self.headers = headers or {}


class NotAcceptable(ServiceError):
    code = ErrorCode.NOT_ACCEPTABLE


class Unauthorized(ServiceError):
    code = ErrorCode.UNAUTHORIZED

    def __init__(self, message: str = "a valid API key is required (Authorization: Bearer KEY or X-API-Key: KEY)"):
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="msdn"'})


class Overloaded(ServiceError):
    """All inference slots and the waiting room are full (503 with Retry-After)."""

    code = ErrorCode.OVERLOADED

    def __init__(self, message: str, *, retry_after_s: int):
        super().__init__(message, headers={"Retry-After": str(int(retry_after_s))})


class NotReady(ServiceError):
    code = ErrorCode.NOT_READY


class RequestTimeout(ServiceError):
    """Processing ran past the configured request time (504)."""

    code = ErrorCode.TIMEOUT


class ModelLoadError(RuntimeError):
    """The model cannot be served (raised at start-up, never answered to a client)."""


#: The PACS clients' errors (``service.pacs.errors``, by class name: no import of the PACS package here).
PACS_CODES: dict[str, ErrorCode] = {
    "PacsNotConfiguredError": ErrorCode.PACS_NOT_CONFIGURED,
    "PacsUnreachableError": ErrorCode.PACS_UNAVAILABLE,
    "PacsTimeoutError": ErrorCode.PACS_TIMEOUT,
    "AssociationRejectedError": ErrorCode.PACS_REFUSED,
    "PacsAuthError": ErrorCode.PACS_REFUSED,
    "AssociationAbortedError": ErrorCode.PACS_UNAVAILABLE,
    "PacsOperationError": ErrorCode.PACS_ERROR,
    "SeriesNotFoundError": ErrorCode.SERIES_NOT_FOUND,
    "SeriesTooLargeError": ErrorCode.SERIES_TOO_LARGE,
    "PacsError": ErrorCode.PACS_ERROR,
}
#: Codes of plain HTTP errors (Starlette's own 404/405, ``HTTPException`` raised by routes) by status.
HTTP_CODES: dict[int, ErrorCode] = {
    401: ErrorCode.UNAUTHORIZED,
    404: ErrorCode.NOT_FOUND,
    405: ErrorCode.METHOD_NOT_ALLOWED,
    406: ErrorCode.NOT_ACCEPTABLE,
    413: ErrorCode.LIMIT_EXCEEDED,
    422: ErrorCode.INVALID_REQUEST,
    500: ErrorCode.INTERNAL_ERROR,
    503: ErrorCode.NOT_READY,
    504: ErrorCode.TIMEOUT,
}


def error_body(exc: MsdnError) -> dict[str, Any]:
    """The JSON body of the answer to ``exc``."""
    return ErrorBody(code=exc.code.value, message=exc.message, detail=exc.detail).model_dump()


def pacs_code(exc: BaseException) -> Optional[ErrorCode]:
    """The code of a PACS client error (its own ``error_code``, else by its most specific known class),
    None for other errors."""
    own = getattr(exc, "error_code", None)
    if isinstance(own, ErrorCode):
        return own
    for cls in type(exc).__mro__:
        if cls.__name__ in PACS_CODES:
            return PACS_CODES[cls.__name__]
    return None


def _msdn_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, MsdnError)
    # The code only: messages name uploaded files, and file names can carry patient identifiers.
    log = logger.warning if exc.status >= 500 else logger.info
    log("answered %d %s", exc.status, exc.code.value)
    return JSONResponse(error_body(exc), status_code=exc.status, headers=getattr(exc, "headers", None) or None)


def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors]
    body = ErrorBody(code=ErrorCode.INVALID_REQUEST.value, message="; ".join(parts) or "invalid request", detail=errors)
    return JSONResponse(body.model_dump(), status_code=422)


def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail
    if isinstance(detail, dict) and isinstance(detail.get("code"), str) and "message" in detail:
        # A route that chose its code and detail (the PACS routes: detail.job_id of a kept SEG...).
        body = ErrorBody(code=detail["code"], message=str(detail["message"]), detail=detail.get("detail"))
        return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=getattr(exc, "headers", None))
    cause = exc.__cause__
    code = pacs_code(cause) if cause is not None else None  # the PACS routes raise HTTPException from PacsError
    if code is None and isinstance(cause, MsdnError):
        code = cause.code
    if code is None:
        code = HTTP_CODES.get(exc.status_code, ErrorCode.INTERNAL_ERROR if exc.status_code >= 500 else _C4XX)
    body = ErrorBody(code=code.value, message=str(exc.detail))
    return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    logger.error("internal error: %s", type(exc).__name__, exc_info=exc)
    body = ErrorBody(code=ErrorCode.INTERNAL_ERROR.value, message="internal error; the server log has the details")
    return JSONResponse(body.model_dump(), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping of domain, validation and HTTP errors to JSON ``ErrorBody`` answers."""
    app.add_exception_handler(MsdnError, _msdn_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
