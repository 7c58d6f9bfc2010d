"""Domain errors and the one place that maps them to HTTP answers.

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

from msdn_core.errors import MsdnError

logger = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    """Body of every error answer."""

    code: str
    message: str
    detail: Optional[Any] = None


class ServiceError(Exception):
    """Base of the domain errors; ``status_code`` and ``code`` pick the answer."""

    status_code: int = 400
    code: str = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        code: Optional[str] = None,
        detail: Any = None,
        headers: Optional[dict[str, str]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.detail = detail
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        """The JSON body of the answer."""
        return ErrorBody(code=self.code, message=self.message, detail=self.detail).model_dump()


class InvalidInput(ServiceError):
    """The request is well-formed HTTP but its content cannot be used (422)."""

    status_code = 422
    code = "invalid_input"


class NotDicom(InvalidInput):
    code = "not_dicom"


class NoPixelData(InvalidInput):
    code = "no_pixel_data"


class UnsupportedTransferSyntax(InvalidInput):
    code = "unsupported_transfer_syntax"


class MixedSeries(InvalidInput):
    code = "mixed_series"


class InconsistentGeometry(InvalidInput):
    code = "inconsistent_geometry"


class ModalityNotAllowed(InvalidInput):
    code = "modality_not_allowed"


class InvalidBoxes(InvalidInput):
    code = "invalid_boxes"


class ReferenceMismatch(InvalidInput):
    code = "reference_mismatch"


class InvalidVolume(InvalidInput):
    code = "invalid_volume"


class UnsafeZip(InvalidInput):
    code = "unsafe_zip"


class LimitExceeded(ServiceError):
    """An upload or volume over a configured limit (413)."""

    status_code = 413
    code = "limit_exceeded"


class NotAcceptable(ServiceError):
    status_code = 406
    code = "not_acceptable"


class Unauthorized(ServiceError):
    status_code = 401
    code = "unauthorized"

    def __init__(self, message: str = "a valid API key is required (Authorization: Bearer KEY or X-API-Key: KEY)"):
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="msdn"'})


class Overloaded(ServiceError):
    """All inference slots and the waiting room are full (503 with Retry-After)."""

    status_code = 503
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: int):
        super().__init__(message, headers={"Retry-After": str(int(retry_after_s))})


class NotReady(ServiceError):
    status_code = 503
    code = "not_ready"


class RequestTimeout(ServiceError):
    """Processing ran past the configured request time (504)."""

    status_code = 504
    code = "timeout"


class ModelLoadError(RuntimeError):
    """The model cannot be served (raised at start-up, never answered to a client)."""


def _service_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    # The code only: messages name uploaded files, and file names can carry patient identifiers.
    log = logger.warning if exc.status_code >= 500 else logger.info
    log("answered %d %s", exc.status_code, exc.code)
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)


def _msdn_error(_: Request, exc: Exception) -> JSONResponse:
    """A core error (readers, geometry, references): its ErrorCode picks the status."""
    assert isinstance(exc, MsdnError)
    log = logger.warning if exc.status >= 500 else logger.info
    log("answered %d %s", exc.status, exc.code.value)
    body = ErrorBody(code=exc.code.value, message=exc.message, detail=exc.detail)
    return JSONResponse(body.model_dump(), status_code=exc.status)


def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = [{k: v for k, v in e.items() if k in ("loc", "msg", "type")} for e in exc.errors()]
    parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in errors]
    body = ErrorBody(code="invalid_request", message="; ".join(parts) or "invalid request", detail=errors)
    return JSONResponse(body.model_dump(), status_code=422)


def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    body = ErrorBody(code=f"http_{exc.status_code}", message=str(exc.detail))
    return JSONResponse(body.model_dump(), status_code=exc.status_code, headers=getattr(exc, "headers", None))


def _unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    logger.error("internal error: %s", type(exc).__name__, exc_info=exc)
    body = ErrorBody(code="internal_error", message="internal error; the server log has the details")
    return JSONResponse(body.model_dump(), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping of domain, validation and HTTP errors to JSON ``ErrorBody`` answers."""
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(MsdnError, _msdn_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
