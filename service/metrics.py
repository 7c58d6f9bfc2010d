"""Prometheus metrics of the service (``GET /metrics``).

Each app has its own registry (several apps in one process, as in tests, do not collide):

* ``msdn_http_requests_total{method, route, status}`` and
  ``msdn_http_request_duration_seconds{method, route}``: every request, by route template
  (``unmatched`` for unknown paths, so the label set stays bounded);
* ``msdn_inference_seconds``: model time per segmentation request;
* ``msdn_slices_processed_total`` and ``msdn_patches_processed_total``: slices of segmented volumes
  and model inputs (slices or crops) run;
* ``msdn_inferences_running`` / ``msdn_inferences_waiting``: the limiter's state;
* ``msdn_rejected_total{reason}``: requests refused for load or time;
* ``msdn_model_info{name, version, sha256, provider, precision}`` = 1: what is served, on which
  provider and in which precision (the ones really in use, not the ones asked for).
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class ServiceMetrics:
    """The metric families of one app (module docstring)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("msdn_http_requests", "HTTP requests", ["method", "route", "status"], registry=r)
        self.latency = Histogram(
            "msdn_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Histogram(
            "msdn_inference_seconds",
            "model (ONNX Runtime) time per segmentation",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.slices = Counter("msdn_slices_processed", "slices of segmented volumes", registry=r)
        self.patches = Counter("msdn_patches_processed", "model inputs (slices or crops) run", registry=r)
        self.running = Gauge("msdn_inferences_running", "segmentations running", registry=r)
        self.waiting = Gauge("msdn_inferences_waiting", "segmentations waiting for a slot", registry=r)
        self.rejected = Counter("msdn_rejected", "requests refused for load or time", ["reason"], registry=r)
        # process_resident_memory_bytes etc.: the idle footprint and what requests leave behind.
        ProcessCollector(registry=r)
        self.model = Gauge(
            "msdn_model_info", "served model", ["name", "version", "sha256", "provider", "precision"], registry=r
        )

    def set_model(self, *, name: str, version: str, sha256: str, provider: str, precision: str) -> None:
        self.model.clear()
        self.model.labels(name=name, version=version, sha256=sha256, provider=provider, precision=precision).set(1)

    def set_limiter(self, running: int, waiting: int) -> None:
        self.running.set(running)
        self.waiting.set(waiting)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware counting requests by route template and status, and timing them."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            method = scope.get("method", "")
            self.metrics.requests.labels(method=method, route=template, status=str(status)).inc()
            self.metrics.latency.labels(method=method, route=template).observe(time.perf_counter() - start)
