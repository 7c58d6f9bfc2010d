"""The route class of the upload routes: their ``multipart/form-data`` bodies go to one spool file.

FastAPI reads a route's form with ``await request.form(...)``; :class:`SpooledFormRoute` hands its
endpoint a :class:`SpooledFormRequest`, whose ``form`` parses multipart bodies with
:func:`service.io.multipart.parse_multipart` (the body in one temporary file, file parts read back
from it) and leaves everything else to Starlette. The form limits FastAPI passes (``max_files``,
``max_fields``, ``max_part_size``) apply unchanged, and a malformed body is a 400 as with
Starlette's parser. This is FastAPI's documented way to customise the request of a route
("Custom Request and APIRoute class").
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from contextlib import aclosing
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.routing import APIRoute
from python_multipart.multipart import parse_options_header
from starlette.datastructures import FormData
from starlette.formparsers import MultiPartException

from service.io.multipart import parse_multipart


class SpooledFormRequest(Request):
    """A request whose multipart form is spooled to one file (module docstring)."""

    async def _get_form(
        self,
        *,
        max_files: int | float = 1000,
        max_fields: int | float = 1000,
        max_part_size: int = 1024 * 1024,
    ) -> FormData:
        if self._form is None:
            content_type, _ = parse_options_header(self.headers.get("Content-Type"))
            if content_type != b"multipart/form-data":
                return await super()._get_form(max_files=max_files, max_fields=max_fields, max_part_size=max_part_size)
            try:
                async with aclosing(self.stream()) as stream:
                    self._form = await parse_multipart(
                        self.headers, stream, max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
                    )
            except MultiPartException as exc:
                raise HTTPException(status_code=400, detail=exc.message) from None
        return self._form


class SpooledFormRoute(APIRoute):
    """An ``APIRoute`` whose endpoint gets a :class:`SpooledFormRequest`."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def spooled_form_handler(request: Request) -> Response:
            return await handler(SpooledFormRequest(request.scope, request.receive))

        return spooled_form_handler
