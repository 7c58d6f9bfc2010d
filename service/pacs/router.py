"""HTTP routes for the PACS: echo, series search, and segment-a-series-from-the-PACS.

Plug into the app with ``app.include_router(router)`` (add the API-key dependency there:
``app.include_router(router, dependencies=[Depends(require_api_key)])``). Two resources are read from
``app.state`` (set them in the app's lifespan, see :func:`pacs_lifespan`) or overridden with
``app.dependency_overrides``:

* ``app.state.pacs_client``: a :class:`~service.pacs.base.PacsClient`; when missing, one is built from
  ``MSDN_PACS_*`` on first use.
* ``app.state.series_pipeline``: a :data:`SeriesPipeline`, i.e. ``f(datasets) -> DICOM SEG Dataset``;
  the segmentation routes answer 503 while there is none.

Errors: PACS failures become 502/504 (peer at fault), a missing series 404, an oversized one 413, an
unusable series (the pipeline raised ValueError) 422; the message says what happened.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Literal

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
SeriesPipeline = Callable[[list[Dataset]], Dataset]

DICOM_MEDIA_TYPE = "application/dicom"

router = APIRouter(prefix="/v1/pacs", tags=["pacs"])
_client_lock = threading.Lock()


# --- dependencies ------------------------------------------------------------------------------


def get_pacs_client(request: Request) -> PacsClient:
    """``app.state.pacs_client``, built from ``MSDN_PACS_*`` on first use when the app set none."""
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
                    )
                with _http_errors():
                    client = create_pacs_client(settings)
                state.pacs_client = client
    return client


def get_series_pipeline(request: Request) -> SeriesPipeline:
    """``app.state.series_pipeline``; 503 when the app has no segmentation pipeline."""
    pipeline = getattr(request.app.state, "series_pipeline", None)
    if pipeline is None:
        raise HTTPException(
            status_code=503, detail="no segmentation pipeline is loaded (no model configured)"
        )
    return pipeline


PacsClientDep = Annotated[PacsClient, Depends(get_pacs_client)]
SeriesPipelineDep = Annotated[SeriesPipeline, Depends(get_series_pipeline)]


@asynccontextmanager
async def pacs_lifespan(app: FastAPI, settings: PacsSettings | None = None) -> AsyncIterator[None]:
    """Create ``app.state.pacs_client`` (unless protocol is ``none``) and close it at shutdown.

    Use inside the app's own lifespan: ``async with pacs_lifespan(app): yield``.
    """
    settings = settings if settings is not None else PacsSettings()
    client = None if settings.protocol == "none" else create_pacs_client(settings)
    app.state.pacs_client = client
    try:
        yield
    finally:
        if client is not None:
            client.close()
        app.state.pacs_client = None


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
def pacs_echo(client: PacsClientDep) -> EchoResponse:
    start = time.perf_counter()
    with _http_errors():
        client.echo()
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
def pacs_find_series(
    client: PacsClientDep,
    study_uid: Annotated[str, Path(pattern=UID_PATTERN, max_length=64)],
    modality: Annotated[str | None, Query(max_length=16, pattern=r"^[A-Z0-9_]+$")] = None,
) -> list[SeriesItem]:
    with _http_errors():
        found: list[SeriesInfo] = client.find_series(study_uid, modality=modality)
    return [SeriesItem(**vars(s)) for s in found]


@router.post(
    "/segment",
    response_model=PacsSegmentResponse,
    summary="Fetch a series from the PACS, segment it, optionally store the DICOM SEG back",
    responses={200: {"content": {DICOM_MEDIA_TYPE: {}}, "description": "summary (json) or the SEG (dicom)"}},
)
def pacs_segment(body: PacsSegmentRequest, client: PacsClientDep, pipeline: SeriesPipelineDep):
    t0 = time.perf_counter()
    with _http_errors():
        datasets = client.fetch_series(body.study_uid, body.series_uid)
    t1 = time.perf_counter()
    try:
        seg = pipeline(datasets)
    except ValueError as exc:
        logger.info("series %s not segmentable: %s", body.series_uid, exc)
        raise HTTPException(
            status_code=422, detail=f"series {body.series_uid} cannot be segmented: {exc}"
        ) from exc
    t2 = time.perf_counter()
    if str(seg.get("Modality", "")) != "SEG":
        raise TypeError(
            f"the series pipeline must return a DICOM SEG dataset, got Modality={seg.get('Modality')!r}"
        )
    store_ms = None
    warnings = 0
    if body.store_result:
        with _http_errors():
            stored = client.store([seg])
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
