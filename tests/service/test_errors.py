"""service.errors: the one mapping of errors to answers (status from ErrorCode, PACS errors to PACS_* codes)."""

from __future__ import annotations

import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient

from msdn_core.errors import ErrorCode, InvalidBoxes, LimitExceeded
from service.errors import Overloaded, install_error_handlers, pacs_code
from service.pacs.errors import (
    AssociationRejectedError,
    PacsError,
    PacsTimeoutError,
    PacsUnreachableError,
    SeriesNotFoundError,
    StoreFailedError,
)


def _app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/boxes")
    def boxes():
        raise InvalidBoxes("boxes[0] is outside the image")

    @app.get("/limit")
    def limit():
        raise LimitExceeded("too many", code=ErrorCode.TOO_MANY_BOXES)

    @app.get("/busy")
    def busy():
        raise Overloaded("busy", retry_after_s=3)

    @app.get("/pacs/{kind}")
    def pacs(kind: str):
        error = {
            "unreachable": PacsUnreachableError("cannot connect to 127.0.0.1:1"),
            "timeout": PacsTimeoutError("no answer"),
            "rejected": AssociationRejectedError("rejected"),
            "missing": SeriesNotFoundError("no series 1.2.3"),
            "store": StoreFailedError("store failed"),
        }[kind]
        try:
            raise error
        except PacsError as exc:  # as service.pacs.router does
            raise HTTPException(status_code=exc.status_code, detail=exc.message) from exc

    return app


@pytest.fixture(scope="module")
def api():
    with TestClient(_app()) as client:
        yield client


def test_domain_errors_answer_with_their_code_and_status(api):
    r = api.get("/boxes")
    assert r.status_code == 422 and r.json() == {
        "code": "invalid_boxes",
        "message": "boxes[0] is outside the image",
        "detail": None,
    }
    r = api.get("/limit")
    assert r.status_code == 413 and r.json()["code"] == "too_many_boxes"
    r = api.get("/busy")
    assert r.status_code == 503 and r.json()["code"] == "overloaded" and r.headers["Retry-After"] == "3"


@pytest.mark.parametrize(
    ("kind", "status", "code"),
    [
        ("unreachable", 502, "pacs_unavailable"),
        ("timeout", 504, "pacs_timeout"),
        ("rejected", 502, "pacs_refused"),
        ("missing", 404, "series_not_found"),
        ("store", 502, "pacs_error"),
    ],
)
def test_pacs_errors_get_pacs_codes_not_http_502(api, kind, status, code):
    r = api.get(f"/pacs/{kind}")
    assert r.status_code == status and r.json()["code"] == code
    assert ErrorCode(code).status == status


def test_plain_http_errors_get_enum_codes(api):
    assert api.get("/nowhere").json()["code"] == "not_found"
    r = api.post("/boxes")
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"


def test_pacs_code_of_unknown_errors_is_none():
    assert pacs_code(ValueError("x")) is None
    assert pacs_code(StoreFailedError("x")) is ErrorCode.PACS_ERROR
