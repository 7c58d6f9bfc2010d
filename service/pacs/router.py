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

import asyncio
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydicom import Dataset

from msdn_core.errors import ErrorCode
from service.errors import ErrorBody
from service.pacs.base import PacsClient, SeriesInfo
from service.pacs.errors import PacsError, PacsNotConfiguredError, is_transient
from service.pacs.factory import create_pacs_client
from service.pacs.settings import PacsSettings

logger = logging.getLogger(__name__)

#: A DICOM UID (PS3.5 9.1: dot-separated numbers without leading zeros, at most 64 characters).
UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"
#: Segments a series: its instances (any order) in, a DICOM SEG (e.g. highdicom Segmentation) out.
SeriesPipeline = Callable[..., Dataset]

DICOM_MEDIA_TYPE = "application/dicom"

_client_lock = threading.Lock()


@asynccontextmanager
async def pacs_lifespan(app: FastAPI, settings: PacsSettings | None = None) -> AsyncIterator[None]:
    """Set up the PACS side of the app, and take it down at shutdown.

    * ``app.state.pacs_io``: the bounded PACS I/O pool (:mod:`service.pacs.io_pool`);
    * ``app.state.pacs_jobs``: the durable jobs (:mod:`service.pacs.jobs`) in ``MSDN_DATA_DIR``;
      jobs a previous process left are resumed (none, and nothing written, without any PACS);
    * our Storage SCP, bound now when the push listener is enabled or C-MOVE is the retrieve method
      (a port that cannot be bound makes ``/readyz`` answer 503, and is retried);
    * ``app.state.pacs_client`` from ``MSDN_PACS_*`` unless the app set one (``protocol=none``: none).

    Pushed series run through the app's inference limiter (``app.state.limiter``) like HTTP requests.
    Invalid ``MSDN_PACS_*`` settings stop the start-up with pydantic's message naming the variable.
    """
    from service.jobs.backoff import Backoff
    from service.jobs.store import JobStore
    from service.pacs.io_pool import PacsIoPool
    from service.pacs.jobs import PacsJobs
    from service.pacs.metrics import PacsJobMetrics
    from service.pacs.scp import StorageReceiver

    settings = settings if settings is not None else PacsSettings()
    loop = asyncio.get_running_loop()
    state = app.state
    io_pool = PacsIoPool(
        max_workers=settings.io_workers, max_queued=settings.io_max_queued, deadline_s=settings.io_deadline_s
    )
    state.pacs_io = io_pool
    if settings.protocol == "none" and not settings.listener_enabled and getattr(state, "pacs_client", None) is None:
        # No PACS: nothing to keep durable (and no MSDN_DATA_DIR written); the routes answer 503.
        state.pacs_jobs = state.pacs_listener = None
        try:
            yield
        finally:
            io_pool.shutdown()
        return
    store = JobStore(settings.data_dir)
    service_metrics = getattr(state, "metrics", None)
    metrics = PacsJobMetrics(getattr(service_metrics, "registry", None), store, ("pacs-push", "pacs-segment"))
    service_settings = getattr(state, "settings", None)
    modality_allowed = getattr(service_settings, "modality_allowed", None) or (lambda modality: True)

    def segment(datasets: list[Dataset]) -> Dataset:
        from service.pacs.jobs import RetryLater

        try:
            pipeline = _pipeline_from_state(state)
        except NoPipelineError as exc:
            raise RetryLater(str(exc), retry_after_s=10) from exc
        future = asyncio.run_coroutine_threadsafe(_run_pipeline(state, pipeline, datasets), loop)
        try:
            return future.result()
        except Exception as exc:
            if getattr(exc, "code", None) == "overloaded":  # the inference limiter is full: later
                raise RetryLater(
                    str(exc), retry_after_s=float(getattr(exc, "headers", {}).get("Retry-After", 5))
                ) from exc
            raise

    def deliver(seg: Dataset):
        client = getattr(state, "pacs_client", None)
        if client is None:
            raise PacsNotConfiguredError("no PACS configured to store the SEG to (MSDN_PACS_PROTOCOL)")
        return io_pool.run_sync(lambda: client.store([seg]), what="store SEG")

    jobs = PacsJobs(
        store,
        segment=segment,
        deliver=deliver if settings.listener_send_result else None,
        model_id=lambda: _model_id(state),
        modality_allowed=modality_allowed,
        idle_s=settings.listener_series_idle_s,
        backoff=Backoff(
            initial_s=settings.job_retry_initial_s,
            max_s=max(settings.job_retry_max_s, settings.job_retry_initial_s),
            deadline_s=settings.job_deadline_s,
        ),
        max_instances=settings.max_instances,
        max_bytes=settings.max_series_bytes,
        max_pending_series=settings.listener_max_pending_series,
        workers=settings.listener_workers,
        metrics=metrics,
    )
    state.pacs_jobs = jobs
    receiver = None
    needs_scp = settings.listener_enabled or (settings.protocol == "dimse" and settings.retrieve == "c-move")
    if needs_scp:
        receiver = StorageReceiver.from_settings(
            settings,
            on_unexpected=jobs.receive if settings.listener_enabled else None,
            on_association_closed=jobs.association_closed,
        )
        _bind(receiver)
    state.pacs_receiver = receiver
    checks = list(getattr(state, "readiness_checks", []) or [])
    if receiver is not None:
        checks.append(_receiver_check(receiver))
    state.readiness_checks = checks
    created = None
    if getattr(state, "pacs_client", None) is None and settings.protocol != "none":
        created = create_pacs_client(settings, receiver=receiver)
        state.pacs_client = created
        logger.info("PACS client: %s", created.describe())
    jobs.start()
    state.pacs_listener = jobs if settings.listener_enabled else None
    try:
        yield
    finally:
        jobs.stop()
        if receiver is not None:
            receiver.stop()
        state.pacs_listener = None
        if created is not None:
            created.close()
            state.pacs_client = None
        io_pool.shutdown()
        metrics.unregister()
        store.close()


def _bind(receiver: Any) -> bool:
    """Start listening; False (logged) when the port cannot be bound."""
    try:
        receiver.start()
        return True
    except OSError as exc:
        logger.error("%s; /readyz answers 503 until it can", exc)
        return False


#: Seconds between two tries to bind a Storage SCP port that was taken.
BIND_RETRY_S = 5.0


def _receiver_check(receiver: Any) -> Callable[[], str | None]:
    """A readiness check: the Storage SCP listens (a failed bind is retried at most every 5 s)."""
    last_try = [time.monotonic()]

    def check() -> str | None:
        if receiver.running:
            return None
        if time.monotonic() - last_try[0] >= BIND_RETRY_S:
            last_try[0] = time.monotonic()
            if _bind(receiver):
                return None
        return f"the Storage SCP cannot listen on {receiver.host}:{receiver.requested_port}"

    return check


def _model_id(state: Any) -> str:
    """What the result UIDs derive from: the model's SHA-256, or the pipeline's declared id / name."""
    runtime = getattr(state, "runtime", None)
    if getattr(state, "series_pipeline", None) is None and runtime is not None:
        return str(runtime.sha256)
    pipeline = getattr(state, "series_pipeline", None)
    declared = getattr(state, "series_pipeline_id", None)
    if declared:
        return str(declared)
    return f"{getattr(pipeline, '__module__', '')}.{getattr(pipeline, '__qualname__', type(pipeline).__name__)}"


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
                        status_code=503,
                        detail=error_detail(
                            ErrorCode.PACS_NOT_CONFIGURED, f"PACS settings (MSDN_PACS_*) are invalid: {exc}"
                        ),
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
        raise HTTPException(status_code=503, detail=error_detail(ErrorCode.NOT_READY, str(exc))) from exc


def _service_pipeline(state: Any) -> SeriesPipeline:
    """The inference service's pipeline (model on ``state.runtime``) as a SeriesPipeline."""
    from service.outputs.dicom_seg import build_seg  # the service package, present in the full app
    from service.pipeline import segment_datasets

    def run(datasets: list[Dataset], deadline: Any = None) -> Dataset:
        result = segment_datasets(datasets, state.runtime, state.settings, deadline=deadline)
        return build_seg(result, keep_empty_frames=state.settings.seg_keep_empty_frames)

    return run


PacsClientDep = Annotated[PacsClient, Depends(get_pacs_client)]
SeriesPipelineDep = Annotated[SeriesPipeline, Depends(get_series_pipeline)]


def _takes_deadline(pipeline: SeriesPipeline) -> bool:
    try:
        return "deadline" in inspect.signature(pipeline).parameters
    except (TypeError, ValueError):
        return False


async def _run_pipeline(state: Any, pipeline: SeriesPipeline, datasets: list[Dataset]) -> Dataset:
    """Run the pipeline in a worker thread, through the app's inference limiter when it has one."""
    with_deadline = _takes_deadline(pipeline)
    limiter = getattr(state, "limiter", None)
    if limiter is not None:
        if with_deadline:
            return await limiter.run(lambda deadline: pipeline(datasets, deadline=deadline))
        return await limiter.run(lambda deadline: pipeline(datasets))
    return await anyio.to_thread.run_sync(lambda: pipeline(datasets))


def error_detail(code: ErrorCode | str, message: str, detail: Any = None) -> dict[str, Any]:
    """An HTTPException detail the service's handler answers as ``{"code", "message", "detail"}``."""
    return {"code": ErrorCode(code).value, "message": message, "detail": detail}


def pacs_http_error(exc: PacsError, detail: Any = None) -> HTTPException:
    """The HTTP answer of a PACS failure: its stable code and status, Retry-After when busy."""
    code = exc.error_code
    headers = None
    if code.status == 503:
        retry = exc.retry_after_s if exc.retry_after_s is not None else 5
        headers = {"Retry-After": str(max(1, int(round(retry))))}
    return HTTPException(status_code=code.status, detail=error_detail(code, exc.message, detail), headers=headers)


@contextmanager
def _http_errors() -> Iterator[None]:
    """The one place PACS domain errors become HTTP errors."""
    try:
        yield
    except PacsError as exc:
        logger.warning("PACS request failed (%s): %s", type(exc).__name__, exc.message)
        raise pacs_http_error(exc) from exc
    except ValueError as exc:  # a UID or option the client refused
        raise HTTPException(status_code=422, detail=error_detail(ErrorCode.INVALID_REQUEST, str(exc))) from exc


def _io_pool(request: Request):
    pool = getattr(request.app.state, "pacs_io", None)
    if pool is None:  # the router's lifespan did not run (an app without it): a private pool
        from service.pacs.io_pool import PacsIoPool

        pool = request.app.state.pacs_io = PacsIoPool()
    return pool


async def _pacs_call(request: Request, function: Callable[[], Any], *, what: str, attempts: int = 1) -> Any:
    """A blocking PACS client call in the PACS I/O pool (deadline), with errors mapped to HTTP.

    Idempotent calls (queries, fetches) get up to ``attempts`` tries while the failure is transient,
    waiting as the peer's Retry-After says (at most 30 s, never past the call's deadline).
    """
    pool = _io_pool(request)
    started = time.monotonic()
    with _http_errors():
        for attempt in range(1, attempts + 1):
            try:
                return await pool.run(function, what=what)
            except PacsError as exc:
                wait = exc.retry_after_s if exc.retry_after_s is not None else 0.5 * 2 ** (attempt - 1)
                left = pool.deadline_s - (time.monotonic() - started)
                if attempt == attempts or not is_transient(exc) or wait > min(30.0, left):
                    raise
                logger.info("%s: %s; retry %d in %.1f s", what, type(exc).__name__, attempt, wait)
                await anyio.sleep(wait)
        raise AssertionError("unreachable")


# --- models ------------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


class PacsSegmentRequest(_Strict):
    """Which series to segment, and what to do with the result (unknown fields are refused)."""

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
    job_id: str | None = Field(default=None, description="the job record (GET /v1/pacs/jobs/{job_id})")


class JobError(BaseModel):
    code: str = Field(description="stable error code (as in error answers)")
    message: str


class DroppedInstance(BaseModel):
    sop_instance_uid: str
    code: str | None = Field(default=None, description="why it was refused at C-STORE (error code)")
    reason: str | None = None


class PacsJob(BaseModel):
    """A PACS job: a pushed series (``pacs-push``) or a ``POST /v1/pacs/segment`` (``pacs-segment``)."""

    id: str
    kind: Literal["pacs-push", "pacs-segment"]
    state: Literal["receiving", "queued", "running", "retrying", "done", "failed"]
    attempts: int = Field(description="store attempts made")
    error: JobError | None = Field(default=None, description="the last error")
    created_at: float = Field(description="Unix time")
    updated_at: float = Field(description="Unix time")
    next_attempt_at: float | None = Field(default=None, description="Unix time of the next store attempt")
    study_uid: str | None = None
    series_uid: str | None = None
    calling_ae: str | None = Field(default=None, description="who pushed the series")
    instances: int | None = Field(default=None, description="instances received (push) or fetched")
    dropped: list[DroppedInstance] = Field(default_factory=list, description="instances refused at C-STORE")
    seg_sop_instance_uid: str | None = None
    seg_series_uid: str | None = None
    result_kept: bool = Field(description="the SEG waits on disk (to be stored, or after a failed store)")


class PacsJobList(BaseModel):
    jobs: list[PacsJob]
    counts: dict[str, int] = Field(description="jobs per state (all of them)")


#: Error answers of the PACS routes (body: ``{"code", "message", "detail"}``).
PACS_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "invalid_request: the body cannot be decoded (not UTF-8 / JSON)"},
    404: {"model": ErrorBody, "description": "series_not_found"},
    413: {"model": ErrorBody, "description": "series_too_large"},
    422: {
        "model": ErrorBody,
        "description": "invalid_request, modality_not_allowed, or invalid_input (the series cannot be segmented)",
    },
    502: {
        "model": ErrorBody,
        "description": "pacs_unavailable (unreachable, aborted), pacs_refused (credentials, AE title), pacs_error",
    },
    503: {
        "model": ErrorBody,
        "description": "pacs_busy (the PACS answered 429/503, or all PACS workers are busy), pacs_not_configured, "
        "overloaded, not_ready; with Retry-After",
    },
    504: {"model": ErrorBody, "description": "pacs_timeout (no answer within the deadline), timeout"},
}
_GATEWAY = {k: v for k, v in PACS_ERROR_RESPONSES.items() if k in (502, 503, 504)}


# --- routes ------------------------------------------------------------------------------------


@router.get(
    "/echo",
    response_model=EchoResponse,
    summary="Check the PACS answers (C-ECHO or QIDO-RS)",
    responses=_GATEWAY,
)
async def pacs_echo(request: Request, client: PacsClientDep) -> EchoResponse:
    start = time.perf_counter()
    await _pacs_call(request, client.echo, what="echo")
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
    responses={422: PACS_ERROR_RESPONSES[422], **_GATEWAY},
)
async def pacs_find_series(
    request: Request,
    client: PacsClientDep,
    study_uid: Annotated[str, Path(pattern=UID_PATTERN, max_length=64)],
    modality: Annotated[str | None, Query(max_length=16, pattern=r"^[A-Z0-9_]+$")] = None,
) -> list[SeriesItem]:
    found: list[SeriesInfo] = await _pacs_call(
        request,
        lambda: client.find_series(study_uid, modality=modality),
        what="find series",
        attempts=_attempts(client),
    )
    return [SeriesItem(**vars(s)) for s in found]


def _attempts(client: PacsClient) -> int:
    settings = getattr(client, "settings", None)
    return int(getattr(settings, "dicomweb_max_attempts", 1) or 1)


def _admit(request: Request) -> None:
    """Refuse (503 overloaded) before any download when the inference limiter is full."""
    limiter = getattr(request.app.state, "limiter", None)
    admit = getattr(limiter, "admit", None)
    if admit is not None:
        admit()


def _check_modality(request: Request, found: list[SeriesInfo], body: PacsSegmentRequest) -> None:
    if not found:
        raise HTTPException(
            status_code=404,
            detail=error_detail(
                ErrorCode.SERIES_NOT_FOUND, f"no series {body.series_uid} in study {body.study_uid} on the PACS"
            ),
        )
    settings = getattr(request.app.state, "settings", None)
    allowed = getattr(settings, "modality_allowed", None)
    modality = found[0].modality
    if allowed is not None and modality and not allowed(modality):
        raise HTTPException(
            status_code=422,
            detail=error_detail(
                ErrorCode.MODALITY_NOT_ALLOWED,
                f"series {body.series_uid} is {modality}; this service takes {settings.allowed_modalities} "
                "(MSDN_ALLOWED_MODALITIES)",
            ),
        )


@router.post(
    "/segment",
    response_model=PacsSegmentResponse,
    summary="Fetch a series from the PACS, segment it, optionally store the DICOM SEG back",
    responses={
        200: {"content": {DICOM_MEDIA_TYPE: {}}, "description": "summary (json) or the SEG (dicom)"},
        **PACS_ERROR_RESPONSES,
    },
)
async def pacs_segment(body: PacsSegmentRequest, request: Request, client: PacsClientDep, pipeline: SeriesPipelineDep):
    """Admission (the inference limiter) and the series' modality (QIDO-RS / C-FIND) are checked
    before anything is downloaded. The SEG gets deterministic UIDs (the same series and model give
    the same SEG) and is kept on disk before it is stored; when the store fails the answer is the
    PACS error (502/503/504) with ``detail.job_id``, and the job retries the store in the background.
    """
    state = request.app.state
    jobs = getattr(state, "pacs_jobs", None)
    _admit(request)
    attempts = _attempts(client)
    t0 = time.perf_counter()
    found = await _pacs_call(
        request,
        lambda: client.find_series(body.study_uid, series_uid=body.series_uid),
        what="find series",
        attempts=attempts,
    )
    _check_modality(request, found, body)
    job = (
        jobs.create_segment_job(study_uid=body.study_uid, series_uid=body.series_uid, store_result=body.store_result)
        if jobs
        else None
    )
    try:
        datasets = await _pacs_call(
            request,
            lambda: client.fetch_series(body.study_uid, body.series_uid),
            what="fetch series",
            attempts=attempts,
        )
        t1 = time.perf_counter()
        try:
            seg = await _run_pipeline(state, pipeline, datasets)
        except ValueError as exc:
            logger.info("series %s not segmentable: %s", body.series_uid, exc)
            raise HTTPException(
                status_code=422,
                detail=error_detail(ErrorCode.INVALID_INPUT, f"series {body.series_uid} cannot be segmented: {exc}"),
            ) from exc
        if str(seg.get("Modality", "")) != "SEG":
            raise TypeError(
                f"the series pipeline must return a DICOM SEG dataset, got Modality={seg.get('Modality')!r}"
            )
        if jobs is not None and job is not None:
            seg = jobs.finish_segmentation(job, seg, datasets)
    except BaseException as exc:
        if jobs is not None and job is not None:
            jobs.fail(job, exc.__cause__ if isinstance(exc, HTTPException) and exc.__cause__ else exc)
        raise
    t2 = time.perf_counter()
    store_ms = None
    warnings = 0
    if body.store_result:
        try:
            stored = await _io_pool(request).run(lambda: client.store([seg]), what="store SEG")
        except PacsError as exc:
            detail: dict[str, Any] = {"seg_sop_instance_uid": str(seg.SOPInstanceUID)}
            if jobs is not None and job is not None:
                after = jobs.record_delivery(job.id, exc)
                detail |= {"job_id": job.id, "job_state": after.state.value, "next_attempt_at": after.next_attempt_at}
            logger.warning("PACS segment: storing SEG %s failed (%s): %s", seg.SOPInstanceUID, type(exc).__name__, exc)
            raise pacs_http_error(exc, detail) from exc
        if jobs is not None and job is not None:
            jobs.record_delivery(job.id, None)
        warnings = len(stored.warnings)
        store_ms = (time.perf_counter() - t2) * 1e3
    elif jobs is not None and job is not None:
        jobs.complete_without_store(job.id)
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
        job_id=job.id if job is not None else None,
    )


def _jobs(request: Request):
    jobs = getattr(request.app.state, "pacs_jobs", None)
    if jobs is None:
        raise HTTPException(
            status_code=503, detail=error_detail(ErrorCode.NOT_READY, "the PACS job store is not running")
        )
    return jobs


@router.get(
    "/jobs",
    response_model=PacsJobList,
    summary="PACS jobs (pushed series and segment requests), newest first",
    responses={
        422: {"model": ErrorBody, "description": "invalid_request"},
        503: {"model": ErrorBody, "description": "not_ready"},
    },
)
async def pacs_jobs(
    request: Request,
    state: Annotated[
        Literal["receiving", "queued", "running", "retrying", "done", "failed"] | None,
        Query(description="only this state"),
    ] = None,
    kind: Annotated[Literal["pacs-push", "pacs-segment"] | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10**9)] = 0,
) -> PacsJobList:
    jobs = _jobs(request)
    kinds = [kind] if kind else ["pacs-push", "pacs-segment"]

    def read() -> PacsJobList:
        records = jobs.store.list(kinds=kinds, states=[state] if state else None, limit=limit, offset=offset)
        return PacsJobList(
            jobs=[PacsJob(**jobs.view(j)) for j in records], counts=jobs.store.count_by_state(kinds=kinds)
        )

    return await anyio.to_thread.run_sync(read)


@router.get(
    "/jobs/{job_id}",
    response_model=PacsJob,
    summary="One PACS job: state, attempts, last error, dropped instances, result UIDs",
    responses={
        404: {"model": ErrorBody, "description": "not_found"},
        422: {"model": ErrorBody, "description": "invalid_request"},
        503: {"model": ErrorBody, "description": "not_ready"},
    },
)
async def pacs_job(request: Request, job_id: Annotated[str, Path(pattern=r"^[0-9a-f]{32}$")]) -> PacsJob:
    jobs = _jobs(request)
    job = await anyio.to_thread.run_sync(jobs.store.get, job_id)
    if job is None or job.kind not in ("pacs-push", "pacs-segment"):
        raise HTTPException(status_code=404, detail=error_detail(ErrorCode.NOT_FOUND, f"no PACS job {job_id}"))
    return PacsJob(**jobs.view(job))


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
