"""Optional API keys: ``Authorization: Bearer KEY`` or ``X-API-Key: KEY``.

Off when ``MSDN_API_KEYS`` is empty (the local default); when set, every route but the health
probes answers 401 without a valid key. Keys are compared in constant time.
"""

from __future__ import annotations

import hmac
from typing import Annotated, Optional

from fastapi import Depends, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from service.errors import Unauthorized

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
    if not given or not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
        raise Unauthorized()


#: Add to a router's ``dependencies`` to protect all its routes.
RequireApiKey = Depends(require_api_key)
