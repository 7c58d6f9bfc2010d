"""The ASGI app: ``service.main:app``, built by ``create_app()``.

The lifespan loads the model once (``ModelRuntime.load``: card, SHA-256 check, providers), makes a
warm-up run, and creates the inference limiter; ``/readyz`` turns 200 once that is done.

Extending: ``create_app(routers=[...])`` adds routers (behind the API key, like ``/segment``).
Without ``routers``, each module of ``OPTIONAL_ROUTER_MODULES`` that is installed contributes its
``router``; a router may carry its own ``lifespan`` (FastAPI merges it into the app's), and reaches
the model, settings, limiter and metrics through ``request.app.state`` or ``service.deps``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from contextlib import asynccontextmanager
from typing import AsyncIterator, Optional, Sequence

import anyio
from fastapi import APIRouter, FastAPI

from msdn_core import __version__
from service.auth import ApiKeyMiddleware, RequireApiKey
from service.body_limit import BodyLimitMiddleware
from service.concurrency import InferenceLimiter
from service.errors import install_error_handlers
from service.jobs.store import JobStore
from service.logs import configure_logging
from service.memory import fix_mmap_threshold
from service.metrics import MetricsMiddleware, ServiceMetrics
from service.model import ModelRuntime
from service.operating_point import auto_mode
from service.routes import docs, health, jobs, segment
from service.routes import metrics as metrics_routes
from service.routes import model as model_routes
from service.segment_jobs import SegmentJobs, store_exists
from service.settings import Settings, get_settings
from service.shutdown import ShutdownMiddleware

logger = logging.getLogger(__name__)

#: Optional packages whose ``router`` joins the app when they are installed.
OPTIONAL_ROUTER_MODULES: tuple[str, ...] = ("service.pacs",)

DESCRIPTION = """Segmentation of CT series with an MSDN model exported to ONNX (ONNX Runtime, no PyTorch).

`POST /segment` takes a DICOM series (files or a zip) or a NIfTI/.npy volume, optional boxes and an
optional reference mask, and answers the mask as JSON (run-length encoded, with per-class volumes,
components and, with a reference, Dice/IoU/HD95), NIfTI or DICOM SEG. Errors are JSON bodies
`{"code", "message", "detail"}`.
"""


def optional_routers() -> list[APIRouter]:
    """Routers of the installed ``OPTIONAL_ROUTER_MODULES``."""
    found = []
    for name in OPTIONAL_ROUTER_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name and name.startswith(exc.name):
                continue
            raise
        router = getattr(module, "router", None)
        if router is not None:
            found.append(router)
    return found


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load (unless given to ``create_app``) and warm the model, create the limiter; stop it at exit."""
    settings: Settings = app.state.settings
    metrics: ServiceMetrics = app.state.metrics
    app.state.ready = False
    fix_mmap_threshold(settings.malloc_mmap_threshold)  # before the first request's buffers (0: nothing)
    runtime = app.state.runtime or await anyio.to_thread.run_sync(ModelRuntime.from_settings, settings)
    if settings.warmup and not runtime.warm:
        await anyio.to_thread.run_sync(runtime.warmup)
    app.state.runtime = runtime
    if runtime.has_detection:
        threshold = settings.proposal_threshold(runtime.card)
        logger.info(
            "proposal score threshold %.4g (%s); mode=auto without boxes runs %s",
            threshold.value,
            threshold.source,
            auto_mode(has_boxes=False, has_detection=True, threshold=threshold),
        )
    metrics.set_model(
        name=runtime.card.name,
        version=str(runtime.card.version),
        sha256=runtime.sha256,
        provider=runtime.provider,
        precision=runtime.precision,
    )
    limiter = InferenceLimiter(
        max_concurrent=settings.max_concurrent_inferences,
        max_queued=settings.max_queued_requests,
        queue_timeout_s=settings.queue_timeout_s,
        request_timeout_s=settings.request_timeout_s,
        retry_after_s=settings.retry_after_s,
        on_change=metrics.set_limiter,
    )
    app.state.limiter = limiter
    if store_exists(settings):  # resume the HTTP jobs a previous process left (else the store opens on first use)
        app.state.jobs = SegmentJobs(JobStore(settings.data_dir), runtime, settings).start()
    app.state.ready = True
    try:
        yield
    finally:
        app.state.ready = False
        if getattr(app.state, "jobs", None) is not None:
            app.state.jobs.stop()
            app.state.jobs.store.close()
            app.state.jobs = None
        limiter.shutdown()


def create_app(
    settings: Optional[Settings] = None,
    *,
    routers: Optional[Sequence[APIRouter]] = None,
    runtime: Optional[ModelRuntime] = None,
) -> FastAPI:
    """Build the app.

    Args:
        settings: configuration (default: ``MSDN_*`` environment).
        routers: extra routers, added behind the API key (default: ``optional_routers()``).
        runtime: an already loaded model (default: loaded from ``settings`` at start-up).
    """
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    extra = {}
    if "form_limits" in inspect.signature(FastAPI).parameters:  # FastAPI >= 0.16x; older: 1000 parts
        # Room for every DICOM part plus volume/reference; the route answers 413 past MSDN_MAX_FILES.
        extra["form_limits"] = {"max_files": settings.max_files + 2}
    app = FastAPI(
        title="msdn inference service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        **extra,
    )
    app.state.settings = settings
    app.state.metrics = ServiceMetrics()
    app.state.runtime = runtime
    app.state.ready = False
    app.state.jobs = None
    install_error_handlers(app)
    # Outermost first on the way in: metrics, API key (before the body is read), body/header limits.
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=settings.max_upload_bytes,
        body_timeout_s=settings.body_timeout_s,
        max_header_count=settings.max_header_count,
        max_header_bytes=settings.max_header_bytes,
    )
    app.add_middleware(ApiKeyMiddleware, keys=lambda: app.state.settings.api_keys)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    app.add_middleware(ShutdownMiddleware, retry_after_s=settings.retry_after_s)  # outermost: sees cancellations
    app.include_router(health.router)
    for router in (segment.router, jobs.router, model_routes.router, metrics_routes.router, docs.router):
        app.include_router(router, dependencies=[RequireApiKey])
    for router in optional_routers() if routers is None else routers:
        app.include_router(router, dependencies=[RequireApiKey])
    return app


app = create_app()
