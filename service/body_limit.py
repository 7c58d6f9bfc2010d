"""Refuse request bodies over ``max_upload_bytes`` with a 413 ``upload_too_large`` JSON answer.

A declared ``Content-Length`` over the limit is answered before anything is read. A body sent
without one (chunked) is counted as it streams in; once it passes the limit, reading stops and the
answer becomes the 413, whatever the application would have said about the cut-off body.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import ErrorCode, LimitExceeded, error_body


class _TooLarge(Exception):
    pass


class BodyLimitMiddleware:
    """Pure ASGI middleware enforcing a maximum request body size."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _error(self, size: str) -> LimitExceeded:
        return LimitExceeded(
            f"request body of {size} bytes is over the limit of {self.max_bytes} (MSDN_MAX_UPLOAD_BYTES)",
            code=ErrorCode.UPLOAD_TOO_LARGE,
        )

    async def _answer(self, error: LimitExceeded, scope: Scope, receive: Receive, send: Send) -> None:
        from fastapi.responses import JSONResponse

        response = JSONResponse(error_body(error), status_code=error.status, headers={"Connection": "close"})
        await response(scope, receive, send)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope.get("headers", []):
            if key == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    break
                if declared > self.max_bytes:
                    await self._answer(self._error(str(declared)), scope, receive, send)
                    return
                break

        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded
            if exceeded:
                raise _TooLarge
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _TooLarge
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded:
                return  # the 413 replaces whatever the app answers about the cut-off body
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except _TooLarge:
            pass
        if exceeded and not started:
            await self._answer(self._error(f"more than {self.max_bytes}"), scope, receive, send)
