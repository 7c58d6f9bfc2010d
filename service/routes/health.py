"""Health probes (never behind an API key): ``/healthz`` alive, ``/readyz`` model loaded and warm."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

from service.deps import RuntimeDep
from service.errors import ErrorBody, NotReady

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Ready(BaseModel):
    status: str
    model: str
    provider: str


@router.get("/healthz", response_model=Health, summary="the process is alive")
async def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Ready,
    summary="the model is loaded and warmed up",
    responses={503: {"model": ErrorBody, "description": "still starting"}},
)
async def readyz(request: Request, runtime: RuntimeDep) -> Ready:
    """503 ``not_ready`` until the model is warm, and while a check in ``app.state.readiness_checks``
    (callables returning a problem or None, e.g. the Storage SCP cannot bind its port) fails."""
    for check in getattr(request.app.state, "readiness_checks", None) or ():
        problem = check()
        if problem:
            raise NotReady(problem)
    return Ready(status="ready", model=f"{runtime.card.name} {runtime.card.version}", provider=runtime.provider)
