"""service.routes.spooled_form: upload routes read their multipart forms through the spool parser."""

from __future__ import annotations

import hashlib
from typing import Annotated

from fastapi import APIRouter, FastAPI, File, Form, UploadFile
from fastapi.testclient import TestClient

from service.io.multipart import PartFile
from service.routes.spooled_form import SpooledFormRoute


def _app() -> FastAPI:
    router = APIRouter(route_class=SpooledFormRoute)

    @router.post("/upload")
    async def upload(files: Annotated[list[UploadFile], File()], note: Annotated[str, Form()]) -> dict:
        return {
            "note": note,
            "types": sorted({type(f.file).__name__ for f in files}),
            "sha": [hashlib.sha256(f.file.read()).hexdigest() for f in files],
        }

    @router.post("/fields")
    async def fields(note: Annotated[str, Form()]) -> dict:
        return {"note": note}

    app = FastAPI(form_limits={"max_files": 2})
    app.include_router(router)
    return app


def test_file_parts_come_from_the_spool_and_fields_as_text():
    blobs = [b"\r\n--" * 1000, b"", bytes(range(256)) * 4000]
    with TestClient(_app()) as client:
        r = client.post(
            "/upload", files=[("files", (f"{i}.bin", b)) for i, b in enumerate(blobs[:2])], data={"note": "\u00e9"}
        )
        assert r.status_code == 200, r.text
        assert r.json() == {
            "note": "\u00e9",
            "types": [PartFile.__name__],
            "sha": [hashlib.sha256(b).hexdigest() for b in blobs[:2]],
        }
        # FastAPI's form limits reach the parser: a third file is a 400, as with Starlette's parser.
        r = client.post("/upload", files=[("files", (f"{i}.bin", b)) for i, b in enumerate(blobs)], data={"note": "x"})
        assert r.status_code == 400 and "Too many files" in r.json()["detail"]
        # URL-encoded forms stay Starlette's.
        assert client.post("/fields", data={"note": "plain"}).json() == {"note": "plain"}


def test_a_truncated_upload_to_segment_is_a_400_with_a_stable_code(client):
    body = b'--b\r\nContent-Disposition: form-data; name="dicom"; filename="a.dcm"\r\n\r\nDICM'
    r = client.post("/segment", content=body, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert r.status_code == 400
    assert r.json()["code"] == "invalid_request" and "closing boundary" in r.json()["message"]
    assert client.get("/healthz").status_code == 200
