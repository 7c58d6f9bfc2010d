"""``POST /segment``: a DICOM series or a volume in, a mask (JSON / NIfTI / DICOM SEG) and scores out."""

from __future__ import annotations

import logging
import uuid
from typing import Annotated, BinaryIO, Literal, Optional

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response
from starlette.background import BackgroundTask

from service.concurrency import Deadline
from service.deps import LimiterDep, MetricsDep, RuntimeDep, SettingsDep
from service.errors import ErrorBody, ErrorCode, InvalidInput, LimitExceeded, NotAcceptable, Overloaded, RequestTimeout
from service.memory import release
from service.outputs.report import SegmentResponse
from service.pipeline import MEDIA_TYPES, SegmentationResult, render
from service.request import run_request
from service.routes.spooled_form import SpooledFormRoute
from service.settings import OutputFormat, Settings

logger = logging.getLogger(__name__)

router = APIRouter(tags=["segmentation"], route_class=SpooledFormRoute)

#: Accept media types -> answer format.
ACCEPT_FORMATS: dict[str, OutputFormat] = {
    "application/json": "json",
    "application/dicom": "dicom-seg",
    "application/gzip": "nifti",
    "application/x-gzip": "nifti",
    "application/nifti": "nifti",
    "application/x-nifti": "nifti",
    "image/png": "png",
}

Mode = Literal["auto", "boxes", "proposals", "slices"]

# The form fields shared by POST /segment and POST /v1/jobs (one declaration: the job takes exactly
# the /segment form).
DicomField = Annotated[
    Optional[list[UploadFile]],
    File(description="DICOM files of one series, or one .zip holding the series (repeat the field per file)"),
]
VolumeField = Annotated[
    Optional[UploadFile],
    File(description="a NIfTI (.nii, .nii.gz), NRRD (.nrrd) or .npy (Z, Y, X) volume instead of DICOM"),
]
SpacingField = Annotated[
    Optional[str],
    Form(description="voxel spacing 'sz,sy,sx' in mm; required for .npy", examples=["2.5,0.7,0.7"]),
]
BoxesField = Annotated[
    Optional[str],
    Form(
        description='JSON list of boxes: {"slice": z, "box": [x1, y1, x2, y2], "label": 1} or '
        '{"box": [x1, y1, z1, x2, y2, z2]} (pixel coordinates), {"sop_instance_uid": uid, "box": [x1, y1, x2, y2]} '
        '(on that DICOM instance) or {"box_mm": [x1, y1, z1, x2, y2, z2]} (two corners in LPS mm)',
        examples=['[{"slice": 0, "box": [10, 10, 40, 40]}]'],
    ),
]
ReferenceField = Annotated[
    Optional[UploadFile],
    File(description="reference mask (NIfTI, NRRD, .npy or DICOM SEG), matched by geometry, for Dice, IoU, HD95"),
]
SeriesUidField = Annotated[
    Optional[str], Form(description="SeriesInstanceUID to segment when the upload holds several series")
]
ModeField = Annotated[
    Mode,
    Form(
        description=(
            "auto: boxes if given, else the detector's proposals if the model has them and a calibrated (card) or "
            "set (MSDN_PROPOSAL_SCORE_THRESHOLD) threshold, else slices; GET /v1/model says which"
        )
    ),
]


def choose_format(field: Optional[str], accept: Optional[str], default: OutputFormat) -> OutputFormat:
    """The answer format: the ``format`` field, else the best ``Accept`` match, else ``default``.

    Raises:
        NotAcceptable: an ``Accept`` header naming none of the offered types.
    """
    if field:
        return field  # type: ignore[return-value]  # validated by the form's Literal
    if not accept or not accept.strip():
        return default
    ranked = []
    for position, part in enumerate(accept.split(",")):
        media, *params = [p.strip() for p in part.split(";")]
        q = 1.0
        for param in params:
            if param.startswith("q="):
                try:
                    q = float(param[2:])
                except ValueError:
                    q = 0.0
        if media and q > 0:
            ranked.append((-q, position, media.lower()))
    for _, _, media in sorted(ranked):
        if media in ACCEPT_FORMATS:
            return ACCEPT_FORMATS[media]
        if media in ("*/*", "application/*"):
            return default
    raise NotAcceptable(
        f"none of the Accept types {accept!r} is offered; use one of {sorted(ACCEPT_FORMATS)} or the 'format' field"
    )


def _named(upload: UploadFile, fallback: str) -> tuple[str, BinaryIO]:
    return (upload.filename or fallback, upload.file)


def _run(deadline: Deadline, *, fmt: OutputFormat, **request) -> tuple[SegmentationResult, bytes]:
    result = run_request(deadline, **request)
    deadline.check()
    body, _, _ = render(result, fmt, settings=request["settings"])
    return result, body


def check_form(
    *, fmt: OutputFormat, dicom_files: list, has_volume: bool, spacing: Optional[str], settings: Settings
) -> None:
    """The checks of the ``/segment`` form that need no decoding (shared with ``POST /v1/jobs``)."""
    if len(dicom_files) > settings.max_files:
        raise LimitExceeded(
            f"{len(dicom_files)} files is over the limit of {settings.max_files} (MSDN_MAX_FILES)",
            code=ErrorCode.TOO_MANY_FILES,
        )
    if bool(dicom_files) == has_volume:
        raise InvalidInput(
            "send either 'dicom' files or one 'volume' file, not both or neither", code=ErrorCode.NO_INPUT
        )
    if fmt == "dicom-seg" and not dicom_files:
        raise InvalidInput(
            "a DICOM SEG answer needs DICOM input; ask for json or nifti", code=ErrorCode.FORMAT_NEEDS_DICOM
        )
    if not has_volume and spacing:
        raise InvalidInput("'spacing' is for .npy volumes; DICOM carries its own", code=ErrorCode.INVALID_SPACING)


_ERRORS = {
    401: {"model": ErrorBody, "description": "API key missing or wrong"},
    406: {"model": ErrorBody, "description": "no acceptable answer format"},
    413: {"model": ErrorBody, "description": "upload, zip, slices or voxels over a limit"},
    422: {"model": ErrorBody, "description": "input that cannot be used (the message says why)"},
    503: {"model": ErrorBody, "description": "busy (Retry-After) or not ready"},
    504: {"model": ErrorBody, "description": "processing ran past MSDN_REQUEST_TIMEOUT_S"},
}


@router.post(
    "/segment",
    summary="segment a DICOM series or a volume",
    response_model=SegmentResponse,
    responses={
        200: {
            "description": "the mask: JSON (metrics, components, RLE mask), NIfTI, DICOM SEG or a PNG preview",
            "content": {
                "application/gzip": {"schema": {"type": "string", "format": "binary"}},
                "application/dicom": {"schema": {"type": "string", "format": "binary"}},
                "image/png": {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **_ERRORS,
    },
)
async def segment(
    request: Request,
    runtime: RuntimeDep,
    settings: SettingsDep,
    limiter: LimiterDep,
    metrics: MetricsDep,
    dicom: DicomField = None,
    volume: VolumeField = None,
    spacing: SpacingField = None,
    boxes: BoxesField = None,
    reference: ReferenceField = None,
    series_uid: SeriesUidField = None,
    mode: ModeField = "auto",
    output_format: Annotated[
        Optional[OutputFormat],
        Form(alias="format", description="json, nifti, dicom-seg (DICOM input only), png (preview); else Accept"),
    ] = None,
) -> Response:
    """Segment one DICOM series (files or a zip) or one NIfTI/.npy volume.

    With ``boxes`` the model segments a patch centred on each box and the mask is kept inside the
    boxes; without, whole slices (or the detector's proposals). With ``reference``, the answer has
    Dice, IoU, HD95 (mm) and volumes (mL) per class and overall.
    """
    fmt = choose_format(output_format, request.headers.get("accept"), settings.default_format)
    dicom_files = [_named(f, f"dicom[{i}]") for i, f in enumerate(dicom or [])]
    check_form(fmt=fmt, dicom_files=dicom_files, has_volume=volume is not None, spacing=spacing, settings=settings)

    request_id = uuid.uuid4().hex[:12]
    logger.info(
        "segment %s: %s input, %d file(s), mode %s, format %s",
        request_id,
        "dicom" if dicom_files else "volume",
        len(dicom_files) or 1,
        mode,
        fmt,
    )
    try:
        result, body = await limiter.run(
            lambda deadline: _run(
                deadline,
                runtime=runtime,
                settings=settings,
                dicom=dicom_files,
                volume=_named(volume, "volume") if volume is not None else None,
                spacing=spacing,
                boxes=boxes,
                reference=_named(reference, "reference") if reference is not None else None,
                series_uid=series_uid,
                mode=mode,
                fmt=fmt,
            )
        )
    except Overloaded:
        metrics.rejected.labels(reason="overloaded").inc()
        raise
    except RequestTimeout:
        metrics.rejected.labels(reason="timeout").inc()
        raise
    metrics.slices.inc(result.image.shape[0])
    metrics.patches.inc(result.run.items)
    metrics.inference.observe(result.run.seconds)
    logger.info("segment %s: done in %.3f s", request_id, result.timings["total_s"])
    media_type, filename = MEDIA_TYPES[fmt]
    headers = {} if fmt in ("json", "png") else {"Content-Disposition": f'attachment; filename="{filename}"'}
    del result
    # After the answer is sent: give the request's freed buffers back to the system.
    return Response(content=body, media_type=media_type, headers=headers, background=BackgroundTask(release))
