"""Optional API keys: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.

Off when ``MSDN_API_KEYS`` is empty (the local default); when set, every route but the health
probes answers 401 without a valid key. Keys are compared in constant time.

:class:`ApiKeyMiddleware` checks the key from the request headers before anything else runs, so a
request without one is answered before its body is read (``Connection: close``); the route
dependency :data:`RequireApiKey` stays for the OpenAPI security declaration (and apps without the
middleware).
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterable
from typing import Annotated, Optional

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import Unauthorized, error_body

api_key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="an API key from MSDN_API_KEYS")
bearer = HTTPBearer(auto_error=False, description="an API key from MSDN_API_KEYS as a bearer token")


async def require_api_key(
    request: Request,
    key: Annotated[Optional[str], Security(api_key_header)],
    credentials: Annotated[Optional[HTTPAuthorizationCredentials], Security(bearer)],
) -> None:
    """Dependency: pass when authentication is off or a configured key is presented."""
    keys: list[str] = request.app.state.settings.api_keys
    if not keys:
        return
    given = key or (credentials.credentials if credentials is not None else None)
    if not key_accepted(given, keys):
        raise Unauthorized()


def key_accepted(given: Optional[str], keys: Iterable[str]) -> bool:
    """Whether ``given`` is one of ``keys`` (constant-time comparisons)."""
    if not given:
        return False
    return any(hmac.compare_digest(given.encode(), k.encode()) for k in keys)


def _key_from_headers(headers: list[tuple[bytes, bytes]]) -> Optional[str]:
    for name, value in headers:
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
    return None


#: Paths open without a key (probes of orchestrators).
OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class ApiKeyMiddleware:
    """Pure ASGI middleware: 401 before the body is read when keys are configured and none matches.

    Args:
        app: the wrapped app.
        keys: returns the accepted keys (read per request, so settings swapped in tests apply).
        open_paths: paths answered without a key.
    """

    def __init__(self, app: ASGIApp, keys: Callable[[], list[str]], open_paths: Iterable[str] = OPEN_PATHS) -> None:
        self.app = app
        self.keys = keys
        self.open_paths = frozenset(open_paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") in self.open_paths:
            await self.app(scope, receive, send)
            return
        keys = self.keys()
        if not keys or key_accepted(_key_from_headers(scope.get("headers", [])), keys):
            await self.app(scope, receive, send)
            return
        from fastapi.responses import JSONResponse

        error = Unauthorized()
        headers = {**error.headers, "Connection": "close"}
        await JSONResponse(error_body(error), status_code=error.status, headers=headers)(scope, receive, send)


#: Add to a router's ``dependencies`` to protect all its routes.
RequireApiKey = Depends(require_api_key)
