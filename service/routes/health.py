"""Health probes (never behind an API key): ``/healthz`` alive, ``/readyz`` model loaded and warm."""

from __future__ import annotations

from fastapi import APIRouter, Request
from pydantic import BaseModel

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
async def readyz(request: Request) -> Ready:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None or not getattr(request.app.state, "ready", False):
        raise NotReady("the model is not loaded and warm yet")
    return Ready(
        status="ready", model=f"{runtime.card.name} {runtime.card.version}", provider=runtime.provider
    )
