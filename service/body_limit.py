"""Request limits enforced in front of the app: header count, body size, body-read deadline.

* More than ``max_header_count`` headers, or more than ``max_header_bytes`` of them: 431
  ``headers_too_large`` before anything else.
* A declared ``Content-Length`` over ``max_bytes`` is answered 413 ``upload_too_large`` before
  anything is read. A body sent without one (chunked) is counted as it streams in; once it passes
  the limit, reading stops and the answer becomes the 413, whatever the application would have said
  about the cut-off body.
* The whole body must arrive within ``body_timeout_s`` (a client that sends less than its
  Content-Length, or trickles it): 408 ``body_timeout``, and the connection is closed.
"""

from __future__ import annotations

import asyncio
from typing import Optional

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ErrorCode, LimitExceeded, MsdnError, ServiceError, error_body


class _Stop(Exception):
    pass


async def _receive_by(receive: Receive, deadline: float) -> Message:
    """``await receive()``, raising ``asyncio.TimeoutError`` at the event loop's time ``deadline``.

    ``asyncio.timeout_at`` (Python 3.11+) arms one timer on the running task; ``asyncio.wait_for``
    (3.10) wraps each call in a new task, which for a 32 MiB upload in 64 KiB messages cost a third
    again of the body's transfer time.
    """
    timeout_at = getattr(asyncio, "timeout_at", None)
    if timeout_at is None:  # Python 3.10
        return await asyncio.wait_for(receive(), timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
    async with timeout_at(deadline):
        return await receive()


class BodyTimeout(ServiceError):
    code = ErrorCode.BODY_TIMEOUT


class HeadersTooLarge(ServiceError):
    code = ErrorCode.HEADERS_TOO_LARGE


class BodyLimitMiddleware:
    """Pure ASGI middleware (module docstring).

    Args:
        app: the wrapped app.
        max_bytes: largest body (``MSDN_MAX_UPLOAD_BYTES``).
        body_timeout_s: time allowed for the whole body (``MSDN_BODY_TIMEOUT_S``); None: no limit.
        max_header_count: most headers (``MSDN_MAX_HEADER_COUNT``); None: no limit.
        max_header_bytes: most bytes of headers (``MSDN_MAX_HEADER_BYTES``; ``msdn serve`` also makes
            uvicorn drop a connection whose unfinished headers pass it); None: no limit.
    """

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        *,
        body_timeout_s: Optional[float] = None,
        max_header_count: Optional[int] = None,
        max_header_bytes: Optional[int] = None,
    ) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.body_timeout_s = body_timeout_s
        self.max_header_count = max_header_count
        self.max_header_bytes = max_header_bytes

    def _too_large(self, size: str) -> LimitExceeded:
        return LimitExceeded(
            f"request body of {size} bytes is over the limit of {self.max_bytes} (MSDN_MAX_UPLOAD_BYTES)",
            code=ErrorCode.UPLOAD_TOO_LARGE,
        )

    async def _answer(self, error: MsdnError, scope: Scope, receive: Receive, send: Send) -> None:
        from fastapi.responses import JSONResponse

        headers = {**(getattr(error, "headers", None) or {}), "Connection": "close"}
        response = JSONResponse(error_body(error), status_code=error.status, headers=headers)
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", [])
        error = None
        if self.max_header_count is not None and len(headers) > self.max_header_count:
            error = HeadersTooLarge(
                f"{len(headers)} request headers is over the limit of {self.max_header_count} (MSDN_MAX_HEADER_COUNT)"
            )
        elif self.max_header_bytes is not None:
            size = sum(len(k) + len(v) + 4 for k, v in headers)
            if size > self.max_header_bytes:
                error = HeadersTooLarge(
                    f"{size} bytes of request headers is over the limit of {self.max_header_bytes} "
                    "(MSDN_MAX_HEADER_BYTES)"
                )
        if error is not None:
            await self._answer(error, scope, receive, send)
            return
        for key, value in headers:
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    break
                if declared > self.max_bytes:
                    await self._answer(self._too_large(str(declared)), scope, receive, send)
                    return
                break

        received = 0
        failure: Optional[MsdnError] = None
        started = False
        body_done = False
        deadline: Optional[float] = None

        async def limited_receive() -> Message:
            nonlocal received, failure, body_done, deadline
            if failure is not None:
                raise _Stop
            if body_done or self.body_timeout_s is None:
                message = await receive()  # after the body: http.disconnect, whenever it comes
            else:
                if deadline is None:
                    deadline = asyncio.get_running_loop().time() + self.body_timeout_s
                try:
                    message = await _receive_by(receive, deadline)
                except asyncio.TimeoutError:
                    failure = BodyTimeout(
                        f"the request body did not arrive within {self.body_timeout_s:g} s (MSDN_BODY_TIMEOUT_S)"
                    )
                    raise _Stop from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if not message.get("more_body", False):
                    body_done = True
                if received > self.max_bytes:
                    failure = self._too_large(f"more than {self.max_bytes}")
                    raise _Stop
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if failure is not None:
                return  # the error answer replaces whatever the app says about the cut-off body
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _Stop:
            pass
        except Exception:
            if failure is None:
                raise
        if failure is not None and not started:
            await self._answer(failure, scope, receive, send)
