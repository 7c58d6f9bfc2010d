"""``GET /metrics``: Prometheus text exposition (``service.metrics``)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.deps import MetricsDep

router = APIRouter(tags=["monitoring"])


@router.get(
    "/metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "metrics"}},
)
async def metrics(metrics: MetricsDep) -> Response:
    return Response(metrics.render(), media_type=metrics.content_type)
