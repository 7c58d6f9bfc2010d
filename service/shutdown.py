"""Graceful shutdown: what a request still running when the shutdown grace runs out is answered.

``msdn serve`` runs uvicorn with ``timeout_graceful_shutdown=MSDN_SHUTDOWN_TIMEOUT_S``: on SIGTERM
(``docker stop``) it stops accepting connections and lets running requests finish for that long,
then cancels them. Uvicorn would answer a cancelled request with a bare ``500 Internal Server
Error``; ``ShutdownMiddleware`` answers it ``503`` with the service's error body (code
``not_ready``, a message saying the service is shutting down, ``Retry-After``) instead, when no
response has started yet.
"""

from __future__ import annotations

import asyncio
import json

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from msdn_core.errors import ErrorCode

MESSAGE = "the service is shutting down and this request did not finish within MSDN_SHUTDOWN_TIMEOUT_S; retry it"


class ShutdownMiddleware:
    """Pure ASGI middleware: 503 for an HTTP request cancelled before its response started."""

    def __init__(self, app: ASGIApp, *, retry_after_s: int = 5) -> None:
        if retry_after_s < 1:
            raise ValueError(f"retry_after_s must be >= 1, got {retry_after_s!r}")
        self.app = app
        self.retry_after_s = int(retry_after_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except asyncio.CancelledError:
            if started:
                raise
            body = json.dumps({"code": ErrorCode.NOT_READY.value, "message": MESSAGE, "detail": None}).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", str(self.retry_after_s).encode()),
                        (b"connection", b"close"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
