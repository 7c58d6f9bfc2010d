"""Request dependencies as ``Annotated`` aliases: the app's settings, model, limiter and metrics."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.concurrency import InferenceLimiter
from service.errors import NotReady
from service.metrics import ServiceMetrics
from service.model import ModelRuntime
from service.settings import Settings


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_runtime(request: Request) -> ModelRuntime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None or not getattr(request.app.state, "ready", False):
        raise NotReady("the model is not loaded and warm yet")
    return runtime


def get_limiter(request: Request) -> InferenceLimiter:
    limiter = getattr(request.app.state, "limiter", None)
    if limiter is None:
        raise NotReady("the service is starting")
    return limiter


def get_metrics(request: Request) -> ServiceMetrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(get_settings)]
RuntimeDep = Annotated[ModelRuntime, Depends(get_runtime)]
LimiterDep = Annotated[InferenceLimiter, Depends(get_limiter)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
