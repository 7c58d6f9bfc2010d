"""``/v1/jobs``: ``/segment`` as a background job (``docs/jobs.md``; the runner is ``service.segment_jobs``)."""

from __future__ import annotations

import logging
import threading
from typing import Annotated, Literal, Optional

import anyio
from fastapi import APIRouter, Form, Query, Request, UploadFile
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field

from service.deps import RuntimeDep, SettingsDep
from service.errors import ErrorBody, ErrorCode, InvalidInput, MsdnError
from service.jobs.store import Job, JobStore
from service.pipeline import MEDIA_TYPES
from service.routes.segment import (
    BoxesField,
    DicomField,
    ModeField,
    ReferenceField,
    SeriesUidField,
    SpacingField,
    VolumeField,
    check_form,
    choose_format,
)
from service.routes.spooled_form import SpooledFormRoute
from service.segment_jobs import SegmentJobs, public_state
from service.settings import OutputFormat

logger = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"], route_class=SpooledFormRoute)
_jobs_lock = threading.Lock()


def get_jobs(request: Request, runtime, settings) -> SegmentJobs:
    """The app's job runner, created (store opened, workers started) on first use."""
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is None:
        with _jobs_lock:
            jobs = getattr(request.app.state, "jobs", None)
            if jobs is None:
                jobs = SegmentJobs(JobStore(settings.data_dir), runtime, settings).start()
                request.app.state.jobs = jobs
    return jobs


class Progress(BaseModel):
    slices_done: int = Field(description="slices segmented so far (whole-slice runs count model batches)")
    slices_total: int = Field(description="slices of the input (0 while not known)")


class JobError(BaseModel):
    code: str = Field(description="the ErrorCode /segment would have answered, or 'cancelled'")
    message: str


class JobStatus(BaseModel):
    """State of one job."""

    id: str
    state: Literal["queued", "running", "done", "failed", "cancelled"]
    progress: Progress
    created_at: float = Field(description="Unix time")
    started_at: Optional[float] = None
    updated_at: float
    timing: dict[str, float] = Field(default_factory=dict, description="run_s: wall time of the run")
    error: Optional[JobError] = None
    formats: list[str] = Field(default_factory=list, description="result formats available when done")
    result: Optional[str] = Field(None, description="URL of the result when done")
    expires_at: Optional[float] = Field(None, description="when a finished job is deleted (MSDN_JOB_TTL_S)")


def status_of(job: Job, ttl_s: float) -> JobStatus:
    state = public_state(job)
    progress = job.info.get("progress") or {}
    final = state in ("done", "failed", "cancelled")
    return JobStatus(
        id=job.id,
        state=state,  # type: ignore[arg-type]
        progress=Progress(
            slices_done=int(progress.get("slices_done") or 0), slices_total=int(progress.get("slices_total") or 0)
        ),
        created_at=job.created_at,
        started_at=job.first_attempt_at,
        updated_at=job.updated_at,
        timing=job.info.get("timing") or {},
        error=JobError(code=job.error_code, message=job.error or "") if job.error_code else None,
        formats=list(job.info.get("formats") or []),
        result=f"/v1/jobs/{job.id}/result" if state == "done" else None,
        expires_at=job.updated_at + ttl_s if final else None,
    )


_ID_ERRORS = {404: {"model": ErrorBody, "description": "no such job (or it expired)"}}


def _not_found(job_id: str) -> MsdnError:
    return MsdnError(f"no job {job_id!r} (unknown, deleted or expired)", code=ErrorCode.NOT_FOUND)


@router.post(
    "/v1/jobs",
    status_code=202,
    summary="queue a /segment request as a job",
    response_model=JobStatus,
    responses={
        202: {"description": "queued; Location names the job", "headers": {"Location": {"schema": {"type": "string"}}}},
        401: {"model": ErrorBody, "description": "API key missing or wrong"},
        413: {"model": ErrorBody, "description": "upload or files over a limit"},
        422: {"model": ErrorBody, "description": "a form that cannot be used (the message says why)"},
        503: {"model": ErrorBody, "description": "MSDN_MAX_QUEUED_JOBS jobs queued or running (Retry-After)"},
    },
)
async def create_job(
    request: Request,
    runtime: RuntimeDep,
    settings: SettingsDep,
    dicom: DicomField = None,
    volume: VolumeField = None,
    spacing: SpacingField = None,
    boxes: BoxesField = None,
    reference: ReferenceField = None,
    series_uid: SeriesUidField = None,
    mode: ModeField = "auto",
    output_format: Annotated[
        Optional[OutputFormat],
        Form(alias="format", description="default format of GET /v1/jobs/{id}/result (any can be asked there)"),
    ] = None,
) -> Response:
    """Queue exactly what ``POST /segment`` takes; poll ``GET /v1/jobs/{id}``, then fetch the result.

    The inputs are written to ``MSDN_DATA_DIR`` before the 202, so a restart loses nothing.
    """
    fmt = output_format or settings.default_format
    names = [(f.filename or f"dicom[{i}]", f) for i, f in enumerate(dicom or [])]
    check_form(fmt=fmt, dicom_files=names, has_volume=volume is not None, spacing=spacing, settings=settings)
    jobs = get_jobs(request, runtime, settings)

    async def read(upload: UploadFile, fallback: str) -> tuple[str, bytes]:
        return (upload.filename or fallback, await upload.read())

    dicom_data = [await read(f, name) for name, f in names]
    volume_data = await read(volume, "volume") if volume is not None else None
    reference_data = await read(reference, "reference") if reference is not None else None
    form = {"spacing": spacing, "boxes": boxes, "series_uid": series_uid, "mode": mode, "format": fmt}
    job = await anyio.to_thread.run_sync(
        lambda: jobs.submit(dicom=dicom_data, volume=volume_data, reference=reference_data, form=form)
    )
    body = status_of(job, settings.job_ttl_s)
    return JSONResponse(body.model_dump(), status_code=202, headers={"Location": f"/v1/jobs/{job.id}"})


@router.get("/v1/jobs/{job_id}", summary="state of a job", response_model=JobStatus, responses=_ID_ERRORS)
async def job_status(job_id: str, request: Request, runtime: RuntimeDep, settings: SettingsDep) -> JobStatus:
    job = get_jobs(request, runtime, settings).get(job_id)
    if job is None:
        raise _not_found(job_id)
    return status_of(job, settings.job_ttl_s)


@router.get(
    "/v1/jobs/{job_id}/result",
    summary="the answer of a done job (format negotiation as /segment)",
    responses={
        200: {
            "description": "the mask: JSON (as /segment), NIfTI, DICOM SEG or a PNG preview",
            "content": {
                "application/json": {},
                "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                "application/dicom": {"schema": {"type": "string", "format": "binary"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        406: {"model": ErrorBody, "description": "no acceptable answer format"},
        409: {"model": ErrorBody, "description": "queued, running or cancelled: no result"},
        422: {"model": ErrorBody, "description": "the job failed (its error), or dicom-seg asked of a volume job"},
        **_ID_ERRORS,
    },
)
async def job_result(
    job_id: str,
    request: Request,
    runtime: RuntimeDep,
    settings: SettingsDep,
    output_format: Annotated[
        Optional[OutputFormat], Query(alias="format", description="json, nifti, dicom-seg, png; else from Accept")
    ] = None,
) -> Response:
    jobs = get_jobs(request, runtime, settings)
    job = jobs.get(job_id)
    if job is None:
        raise _not_found(job_id)
    state = public_state(job)
    if state == "failed":
        raise MsdnError(job.error or "the job failed", code=job.error_code or ErrorCode.INTERNAL_ERROR)
    if state != "done":
        raise MsdnError(f"job {job_id} is {state}: no result", code=ErrorCode.JOB_NOT_DONE)
    default = job.info.get("form", {}).get("format") or settings.default_format
    fmt = choose_format(output_format, request.headers.get("accept"), default)
    if fmt not in (job.info.get("formats") or []):
        raise InvalidInput(
            "a DICOM SEG answer needs DICOM input; ask for json, nifti or png", code=ErrorCode.FORMAT_NEEDS_DICOM
        )
    path = jobs.result_path(job, fmt)
    if not path.is_file():
        raise _not_found(job_id)
    media_type, filename = MEDIA_TYPES[fmt]
    if fmt in ("json", "png"):
        return FileResponse(path, media_type=media_type)
    return FileResponse(path, media_type=media_type, filename=filename)


@router.delete(
    "/v1/jobs/{job_id}",
    summary="cancel a queued or running job; delete a finished one",
    response_model=JobStatus,
    responses={
        200: {"description": "cancelled (a running job stops at its next model batch)"},
        204: {"description": "a finished job deleted"},
        **_ID_ERRORS,
    },
)
async def delete_job(job_id: str, request: Request, runtime: RuntimeDep, settings: SettingsDep) -> Response:
    jobs = get_jobs(request, runtime, settings)
    if jobs.get(job_id) is None:
        raise _not_found(job_id)
    job = await anyio.to_thread.run_sync(lambda: jobs.cancel_or_delete(job_id))
    if job is None:
        return Response(status_code=204)
    return JSONResponse(status_of(job, settings.job_ttl_s).model_dump())
