"""A small client of a running msdn service: ``POST /segment`` with httpx (``msdn segment --url``)."""

from __future__ import annotations

import json
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

import httpx

from msdn_core.errors import ErrorCode, MsdnError
from service.batch.inputs import Study


class RemoteError(MsdnError):
    """The server answered an error body ``{"code", "message"}`` (kept as is)."""

    def __init__(self, message: str, *, code: str, status: int) -> None:
        try:
            known = ErrorCode(code)
        except ValueError:
            known = ErrorCode.INTERNAL_ERROR
        super().__init__(message, code=known)
        self.wire_code = code
        self.http_status = status


class Client:
    """``POST {url}/segment`` for studies.

    Args:
        url: the service's base URL (``http://host:8000``).
        api_key: sent as ``Authorization: Bearer``.
        timeout_s: per request.
    """

    def __init__(self, url: str, *, api_key: Optional[str] = None, timeout_s: float = 600.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {url!r}")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout_s)

    def close(self) -> None:
        self.http.close()

    def segment(
        self,
        study: Study,
        *,
        fmt: str,
        mode: str = "auto",
        boxes: Optional[str] = None,
        reference: Optional[str] = None,
        spacing: Optional[str] = None,
    ) -> bytes:
        """The answer body for ``study`` in ``fmt``; raises :class:`RemoteError` on an error answer."""
        data = {"mode": mode, "format": fmt}
        if study.boxes or boxes:
            data["boxes"] = study.boxes or boxes
        if study.series_uid:
            data["series_uid"] = study.series_uid
        if spacing and study.kind == "volume":
            data["spacing"] = spacing
        with ExitStack() as stack:
            field = "volume" if study.kind == "volume" else "dicom"
            files = [(field, (p.name, stack.enter_context(open(p, "rb")))) for p in study.files]
            ref = study.reference or reference
            if ref:
                files.append(("reference", (Path(ref).name, stack.enter_context(open(ref, "rb")))))
            response = self.http.post("/segment", data=data, files=files)
        if response.status_code != 200:
            try:
                body = response.json()
                code, message = str(body.get("code")), str(body.get("message"))
            except (json.JSONDecodeError, AttributeError):
                code, message = ErrorCode.INTERNAL_ERROR.value, response.text[:200]
            raise RemoteError(f"HTTP {response.status_code}: {message}", code=code, status=response.status_code)
        return response.content
