"""A benchmark-only ASGI app: the HTTP ingest floor of ``POST /segment``, without the service.

``benchmarks/service.py`` serves it through uvicorn as the service is served and posts the same
multipart bodies to it, so its table shows how much of a request's time is transport:

* ``POST /read``: reads the body and answers its size (uvicorn + HTTP transfer only);
* ``POST /form``: also parses it with Starlette's parser (python-multipart, each file part in its
  own ``SpooledTemporaryFile``), then closes the form: the service's ingest before session 5;
* ``POST /spool``: parses it as the service's upload routes do now
  (``service.io.multipart.parse_multipart``: the body in one temporary file, parts read back from it).

Not part of the service; nothing imports it outside the benchmarks.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.io.multipart import parse_multipart

#: as generous as the service's defaults (MSDN_MAX_FILES + the form's other fields)
MAX_FILES = 4096 + 10
MAX_FIELDS = 1000


async def read_body(request: Request) -> JSONResponse:
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
    return JSONResponse({"bytes": size})


async def parse_form(request: Request) -> JSONResponse:
    form = await request.form(max_files=MAX_FILES, max_fields=MAX_FIELDS)
    try:
        parts = len(form.multi_items())
    finally:
        await form.close()
    return JSONResponse({"parts": parts})


async def parse_spooled(request: Request) -> JSONResponse:
    form = await parse_multipart(request.headers, request.stream(), max_files=MAX_FILES, max_fields=MAX_FIELDS)
    try:
        parts = len(form.multi_items())
    finally:
        await form.close()
    return JSONResponse({"parts": parts})


async def ready(request: Request) -> JSONResponse:
    return JSONResponse({"ready": True})


app = Starlette(
    routes=[
        Route("/read", read_body, methods=["POST"]),
        Route("/form", parse_form, methods=["POST"]),
        Route("/spool", parse_spooled, methods=["POST"]),
        Route("/readyz", ready, methods=["GET"]),
    ]
)
