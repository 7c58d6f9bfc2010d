"""HTTP routes for the PACS: echo, series search, and segment-a-series-from-the-PACS.

The router carries its own lifespan (FastAPI runs it inside the app's): it creates
``app.state.pacs_client`` from ``MSDN_PACS_*`` unless the app set one (``protocol=none``: no client,
the routes answer 503), starts the push listener when ``MSDN_PACS_LISTENER_ENABLED``, and closes
both at shutdown. Add the API-key dependency when including it:
``app.include_router(router, dependencies=[Depends(require_api_key)])``.

The segmentation step is the dependency :func:`get_series_pipeline`, in this order:

1. ``app.state.series_pipeline`` if set: any ``f(datasets) -> DICOM SEG Dataset`` (e.g. returning a
   highdicom ``Segmentation``); it may take a ``deadline`` keyword;
2. otherwise, with the inference service's model loaded (``app.state.runtime``), the service
   pipeline: ``service.pipeline.segment_datasets`` then ``service.outputs.dicom_seg.build_seg``;
3. otherwise 503.

It runs in a worker thread, through ``app.state.limiter`` (the service's inference limiter) when
there is one. Errors: PACS failures become 502/504 (peer at fault), a missing series 404, an
oversized one 413, an unusable series (the pipeline raised ValueError) 422; the message says what
happened. Domain errors of the service pipeline propagate to the app's own handlers.
"""

from __future__ import annotations

import inspect
import io
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Any, Literal

import anyio
import pydicom
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field, ValidationError
from pydicom import Dataset

from service.pacs.base import PacsClient, SeriesInfo
from service.pacs.errors import PacsError
from service.pacs.factory import create_pacs_client
from service.pacs.settings import PacsSettings

logger = logging.getLogger(__name__)

#: A DICOM UID (digits and dots, at most 64 characters).
UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
#: Segments a series: its instances (any order) in, a DICOM SEG (e.g. highdicom Segmentation) out.
SeriesPipeline = Callable[..., Dataset]

DICOM_MEDIA_TYPE = "application/dicom"

_client_lock = threading.Lock()


@asynccontextmanager
async def pacs_lifespan(app: FastAPI, settings: PacsSettings | None = None) -> AsyncIterator[None]:
    """Create ``app.state.pacs_client`` (unless set, or protocol ``none``), start the push listener
    when enabled, and close both at shutdown.

    The push listener (``MSDN_PACS_LISTENER_ENABLED``) segments pushed series one at a time in its own
    worker thread (outside the HTTP inference limiter) and stores each SEG with the PACS client.

    Invalid ``MSDN_PACS_*`` settings stop the start-up with pydantic's message naming the variable.
    """
    settings = settings if settings is not None else PacsSettings()
    created = None
    receiver = assembler = None
    if settings.listener_enabled:
        from service.pacs.listener import SeriesAssembler, auto_segment_handler
        from service.pacs.scp import StorageReceiver

        def current_pipeline() -> SeriesPipeline:
            return _pipeline_from_state(app.state)

        def handle(datasets: list[Dataset], calling_ae: str) -> None:
            client = getattr(app.state, "pacs_client", None)
            auto_segment_handler(current_pipeline, client, send_result=settings.listener_send_result)(
                datasets, calling_ae
            )

        assembler = SeriesAssembler(
            handle,
            idle_s=settings.listener_series_idle_s,
            max_instances=settings.max_instances,
            max_bytes=settings.max_series_bytes,
        ).start()
        try:
            receiver = StorageReceiver.from_settings(settings, on_unexpected=assembler.add).start()
        except OSError:
            assembler.stop()
            raise
        app.state.pacs_listener = assembler
    if getattr(app.state, "pacs_client", None) is None and settings.protocol != "none":
        created = create_pacs_client(settings, receiver=receiver)
        app.state.pacs_client = created
        logger.info("PACS client: %s", created.describe())
    try:
        yield
    finally:
        if receiver is not None:
            receiver.stop()
        if assembler is not None:
            assembler.stop()
            app.state.pacs_listener = None
        if created is not None:
            created.close()
            app.state.pacs_client = None


router = APIRouter(prefix="/v1/pacs", tags=["pacs"], lifespan=pacs_lifespan)


# --- dependencies ------------------------------------------------------------------------------


def get_pacs_client(request: Request) -> PacsClient:
    """``app.state.pacs_client``, built from ``MSDN_PACS_*`` on first use when there is none."""
    state = request.app.state
    client = getattr(state, "pacs_client", None)
    if client is None:
        with _client_lock:
            client = getattr(state, "pacs_client", None)
            if client is None:
                try:
                    settings = PacsSettings()
                except ValidationError as exc:
                    raise HTTPException(
                        status_code=503, detail=f"PACS settings (MSDN_PACS_*) are invalid: {exc}"
                    ) from exc
                with _http_errors():
                    client = create_pacs_client(settings)
                state.pacs_client = client
    return client


class NoPipelineError(LookupError):
    """Neither ``app.state.series_pipeline`` nor a loaded model."""


def _pipeline_from_state(state: Any) -> SeriesPipeline:
    pipeline = getattr(state, "series_pipeline", None)
    if pipeline is not None:
        return pipeline
    if getattr(state, "runtime", None) is not None:
        return _service_pipeline(state)
    raise NoPipelineError("no segmentation pipeline is loaded (no model configured)")


def get_series_pipeline(request: Request) -> SeriesPipeline:
    """The segmentation step (module docstring); 503 when there is none."""
    try:
        return _pipeline_from_state(request.app.state)
    except NoPipelineError as exc:
        raise HTTPException(status_code=503, detail=str(exc)) from exc


def _service_pipeline(state: Any) -> SeriesPipeline:
    """The inference service's pipeline (model on ``state.runtime``) as a SeriesPipeline."""
    from service.outputs.dicom_seg import build_seg  # the service package, present in the full app
    from service.pipeline import segment_datasets

    def run(datasets: list[Dataset], deadline: Any = None) -> Dataset:
        return build_seg(segment_datasets(datasets, state.runtime, state.settings, deadline=deadline))

    return run


PacsClientDep = Annotated[PacsClient, Depends(get_pacs_client)]
SeriesPipelineDep = Annotated[SeriesPipeline, Depends(get_series_pipeline)]


def _takes_deadline(pipeline: SeriesPipeline) -> bool:
    try:
        return "deadline" in inspect.signature(pipeline).parameters
    except (TypeError, ValueError):
        return False


async def _run_pipeline(request: Request, pipeline: SeriesPipeline, datasets: list[Dataset]) -> Dataset:
    """Run the pipeline in a worker thread, through the app's inference limiter when it has one."""
    with_deadline = _takes_deadline(pipeline)
    limiter = getattr(request.app.state, "limiter", None)
    if limiter is not None:
        if with_deadline:
            return await limiter.run(lambda deadline: pipeline(datasets, deadline=deadline))
        return await limiter.run(lambda deadline: pipeline(datasets))
    return await anyio.to_thread.run_sync(lambda: pipeline(datasets))


@contextmanager
def _http_errors() -> Iterator[None]:
    """The one place PACS domain errors become HTTP errors."""
    try:
        yield
    except PacsError as exc:
        logger.warning("PACS request failed (%s): %s", type(exc).__name__, exc.message)
        raise HTTPException(status_code=exc.status_code, detail=exc.message) from exc
    except ValueError as exc:  # a UID or option the client refused
        raise HTTPException(status_code=422, detail=str(exc)) from exc


async def _pacs_call(function: Callable[[], Any]) -> Any:
    """A blocking PACS client call, in a worker thread, with errors mapped to HTTP."""
    with _http_errors():
        return await anyio.to_thread.run_sync(function)


# --- models ------------------------------------------------------------------------------------


class EchoResponse(BaseModel):
    ok: bool = Field(description="the PACS answered")
    protocol: str = Field(description="dicomweb or dimse")
    peer: str = Field(description="the PACS (URL or AE@host:port)")
    elapsed_ms: float


class SeriesItem(BaseModel):
    study_uid: str
    series_uid: str
    modality: str | None = None
    series_number: int | None = None
    series_description: str | None = None
    instance_count: int | None = None


class PacsSegmentRequest(BaseModel):
    """Which series to segment, and what to do with the result."""

    study_uid: str = Field(pattern=UID_PATTERN, max_length=64, description="StudyInstanceUID")
    series_uid: str = Field(pattern=UID_PATTERN, max_length=64, description="SeriesInstanceUID")
    store_result: bool = Field(default=False, description="store the DICOM SEG back to the PACS")
    format: Literal["json", "dicom"] = Field(
        default="json", description="json: a summary; dicom: the DICOM SEG itself (application/dicom)"
    )


class SegmentInfo(BaseModel):
    number: int
    label: str


class PacsSegmentResponse(BaseModel):
    study_uid: str
    series_uid: str
    instances: int = Field(description="instances fetched from the PACS")
    seg_sop_instance_uid: str
    seg_series_uid: str
    segments: list[SegmentInfo]
    stored: bool = Field(description="the SEG was stored to (and accepted by) the PACS")
    store_warnings: int = 0
    fetch_ms: float
    segment_ms: float
    store_ms: float | None = None


# --- routes ------------------------------------------------------------------------------------


@router.get("/echo", response_model=EchoResponse, summary="Check the PACS answers (C-ECHO or QIDO-RS)")
async def pacs_echo(client: PacsClientDep) -> EchoResponse:
    start = time.perf_counter()
    await _pacs_call(client.echo)
    return EchoResponse(
        ok=True,
        protocol=client.protocol,
        peer=client.describe(),
        elapsed_ms=(time.perf_counter() - start) * 1e3,
    )


@router.get(
    "/studies/{study_uid}/series",
    response_model=list[SeriesItem],
    summary="Series of a study on the PACS (QIDO-RS or C-FIND)",
)
async def pacs_find_series(
    client: PacsClientDep,
    study_uid: Annotated[str, Path(pattern=UID_PATTERN, max_length=64)],
    modality: Annotated[str | None, Query(max_length=16, pattern=r"^[A-Z0-9_]+$")] = None,
) -> list[SeriesItem]:
    found: list[SeriesInfo] = await _pacs_call(lambda: client.find_series(study_uid, modality=modality))
    return [SeriesItem(**vars(s)) for s in found]


@router.post(
    "/segment",
    response_model=PacsSegmentResponse,
    summary="Fetch a series from the PACS, segment it, optionally store the DICOM SEG back",
    responses={200: {"content": {DICOM_MEDIA_TYPE: {}}, "description": "summary (json) or the SEG (dicom)"}},
)
async def pacs_segment(body: PacsSegmentRequest, request: Request, client: PacsClientDep, pipeline: SeriesPipelineDep):
    t0 = time.perf_counter()
    datasets = await _pacs_call(lambda: client.fetch_series(body.study_uid, body.series_uid))
    t1 = time.perf_counter()
    try:
        seg = await _run_pipeline(request, pipeline, datasets)
    except ValueError as exc:
        logger.info("series %s not segmentable: %s", body.series_uid, exc)
        raise HTTPException(status_code=422, detail=f"series {body.series_uid} cannot be segmented: {exc}") from exc
    t2 = time.perf_counter()
    if str(seg.get("Modality", "")) != "SEG":
        raise TypeError(f"the series pipeline must return a DICOM SEG dataset, got Modality={seg.get('Modality')!r}")
    store_ms = None
    warnings = 0
    if body.store_result:
        stored = await _pacs_call(lambda: client.store([seg]))
        warnings = len(stored.warnings)
        store_ms = (time.perf_counter() - t2) * 1e3
    logger.info(
        "PACS segment: series %s, %d instances -> SEG %s%s",
        body.series_uid,
        len(datasets),
        seg.SOPInstanceUID,
        " (stored)" if body.store_result else "",
    )
    if body.format == "dicom":
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, seg, enforce_file_format=True)
        return Response(
            content=buffer.getvalue(),
            media_type=DICOM_MEDIA_TYPE,
            headers={
                "Content-Disposition": f'attachment; filename="{seg.SOPInstanceUID}.dcm"',
                "X-MSDN-Stored": "true" if body.store_result else "false",
            },
        )
    return PacsSegmentResponse(
        study_uid=body.study_uid,
        series_uid=body.series_uid,
        instances=len(datasets),
        seg_sop_instance_uid=str(seg.SOPInstanceUID),
        seg_series_uid=str(seg.SeriesInstanceUID),
        segments=[
            SegmentInfo(number=int(item.SegmentNumber), label=str(item.get("SegmentLabel", "")))
            for item in seg.get("SegmentSequence", [])
        ],
        stored=body.store_result,
        store_warnings=warnings,
        fetch_ms=(t1 - t0) * 1e3,
        segment_ms=(t2 - t1) * 1e3,
        store_ms=store_ms,
    )


__all__ = [
    "PacsClientDep",
    "PacsSegmentRequest",
    "PacsSegmentResponse",
    "SeriesPipeline",
    "SeriesPipelineDep",
    "get_pacs_client",
    "get_series_pipeline",
    "pacs_lifespan",
    "router",
]
