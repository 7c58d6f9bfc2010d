"""The segmentation pipeline, reusable outside ``POST /segment`` (e.g. by a PACS router). Torch-free.

    datasets --series_volume--> Volume --inference--> labels --postprocess--> components
      --evaluation--> SegmentationResult
    SegmentationResult --render--> JSON (metrics, components, RLE mask) | NIfTI | DICOM SEG

Entry points:

* ``segment_datasets(datasets, runtime, settings, ...)``: a list of pydicom ``Dataset`` (one series,
  or several plus ``series_uid``) to a ``SegmentationResult``. The datasets' pixel data are released
  after decoding; their metadata stay as the sources of a DICOM SEG.
* ``segment_image(image, runtime, settings, ...)``: the same from an ``Volume`` (NIfTI, .npy).
* ``render(result, fmt, settings)``: the answer body ``(bytes, media type, file name)`` for
  ``fmt`` in ``json``, ``nifti``, ``dicom-seg``, ``png`` (``service.outputs.preview``);
  ``service.outputs.dicom_seg.build_seg(result)``
  gives the SEG as a ``Dataset`` (to store to a PACS).

Both ``segment_*`` functions block (decoding, ONNX Runtime): from async code run them through the
app's limiter, which bounds concurrency and applies the request time limit::

    limiter = request.app.state.limiter          # service.concurrency.InferenceLimiter
    runtime = request.app.state.runtime          # service.model.ModelRuntime
    settings = request.app.state.settings
    result = await limiter.run(
        lambda deadline: segment_datasets(datasets, runtime, settings, deadline=deadline))
    seg = build_seg(result)                      # highdicom Segmentation referencing the series

Errors are ``msdn_core.errors.MsdnError`` subclasses; ``service.errors`` turns them into 4xx JSON.
"""

from __future__ import annotations

import logging
import time
from typing import Optional, Sequence

import numpy as np
from pydicom.dataset import Dataset

from msdn_core.grid import ModelGrid
from msdn_core.postprocess import CandidateBox, postprocess
from msdn_core.reference import labels_from_seg, match_reference
from msdn_core.volume import Volume
from service.boxes import SliceBox, names_instances, parse_boxes
from service.concurrency import Deadline
from service.errors import ErrorCode, InvalidInput
from service.evaluation import evaluate
from service.inference import InferenceOutput, output_to_native, segment_volume_array
from service.io.dicom import series_volume
from service.model import ModelRuntime
from service.operating_point import auto_mode
from service.result import SegmentationResult
from service.settings import OutputFormat, Settings

logger = logging.getLogger(__name__)

MODES = ("auto", "boxes", "proposals", "slices")

#: Media type and file name of each answer format.
MEDIA_TYPES: dict[str, tuple[str, str]] = {
    "json": ("application/json", "segmentation.json"),
    "nifti": ("application/gzip", "mask.nii.gz"),
    "dicom-seg": ("application/dicom", "segmentation.dcm"),
    "png": ("image/png", "preview.png"),
}


def segment_image(
    image: Volume,
    runtime: ModelRuntime,
    settings: Settings,
    *,
    boxes: Optional[str | Sequence[SliceBox]] = None,
    mode: str = "auto",
    reference: Optional[Volume | np.ndarray | Dataset] = None,
    deadline: Optional[Deadline] = None,
    read_s: float = 0.0,
    with_slices: bool = False,
) -> SegmentationResult:
    """Segment an ``Volume``.

    Args:
        image: the input.
        runtime: the model.
        settings: limits and proposal settings.
        boxes: the ``boxes`` JSON text (``service.boxes``) or parsed boxes.
        mode: ``auto``, ``boxes``, ``proposals`` or ``slices`` (see ``service.inference``; ``auto``
            runs proposals only for a calibrated or set threshold: ``service.operating_point``).
        reference: labels (Z, Y, X) or a DICOM SEG dataset; adds ``metrics``.
        deadline: checked between model batches.
        read_s: time already spent reading the input (reported in ``timings``).
        with_slices: proposals mode: also return the whole-slice answer of the detector's pass as
            ``result.slices`` (one model run for both; used by the whole-series benchmark).
    """
    t0 = time.perf_counter()
    card = runtime.card
    class_names = [c.name for c in card.classes]
    if mode not in MODES:
        raise InvalidInput(f"mode must be one of {list(MODES)}, got {mode!r}", code=ErrorCode.INVALID_MODE)
    parsed = (
        parse_boxes(
            boxes,
            shape=image.shape,
            class_names=class_names,
            max_boxes=settings.max_boxes,
            affine=image.affine,
            sop_instance_uids=image.series.sop_instance_uids if image.series and not image.series.multiframe else None,
        )
        if boxes is None or isinstance(boxes, str)
        else list(boxes)
    )
    if mode == "boxes" and not parsed:
        raise InvalidInput("mode 'boxes' needs a non-empty 'boxes' field", code=ErrorCode.INVALID_MODE)
    if mode == "proposals" and not runtime.has_detection:
        raise InvalidInput(
            "mode 'proposals' needs a model with detection outputs; this model has none", code=ErrorCode.INVALID_MODE
        )
    if mode in ("slices", "proposals") and parsed:
        raise InvalidInput(
            f"mode {mode!r} does not use boxes; leave out 'boxes' or use mode 'boxes'", code=ErrorCode.INVALID_MODE
        )
    threshold = settings.proposal_threshold(card)
    confirm = settings.proposal_confirmation_for(card) == "segmentation"
    ref_labels = None
    if reference is not None:
        if isinstance(reference, Dataset):
            ref_labels = labels_from_seg(
                reference,
                image=image,
                name="reference",
                num_classes=card.num_classes,
                position_tol_mm=settings.reference_position_tol_mm,
            )
        else:
            ref_labels = match_reference(reference, image=image, name="reference", num_classes=card.num_classes)

    # The one canonical-grid step (msdn_core.grid): the model runs on the grid its card names, the
    # answer comes back onto the input's grid (identity for cards without a grid).
    transform = settings.model_grid(card).transform_for(image)
    model_image = transform.model_volume(image)
    out = segment_volume_array(
        runtime,
        model_image.array,
        mode=mode,
        boxes=transform.slice_boxes_to_model(parsed),
        proposal=settings.proposal_settings(card),
        auto_proposals=auto_mode(has_boxes=False, has_detection=runtime.has_detection, threshold=threshold)
        == "proposals",
        box_margin=settings.proposal_box_margin,
        z_margin=settings.proposal_z_margin,
        with_slices=with_slices,
        confirm=confirm,
        check=deadline.check if deadline is not None else None,
        decoded=model_image.decoded,
        load=model_image.load if model_image.loader is not None else None,
    )
    out = output_to_native(out, transform, request_boxes=parsed)
    t_model = time.perf_counter()
    found, metrics = _finish(
        out, image, settings, class_names, ref_labels, min_score=threshold.value if out.mode == "proposals" else None
    )
    total = read_s + time.perf_counter() - t0
    slices_result = None
    if out.slices is not None:
        # the whole-slice answer of the same model run: its model time, plus its own post-processing
        t1 = time.perf_counter()
        s_found, s_metrics = _finish(out.slices, image, settings, class_names, ref_labels)
        s_total = read_s + out.slices.stats.seconds + (t_model - t0 - out.stats.seconds) + time.perf_counter() - t1
        slices_result = SegmentationResult(
            image=image,
            labels=out.slices.labels,
            mode="slices",
            boxes=[],
            components=s_found,
            metrics=s_metrics,
            run=out.slices.stats,
            timings={"read_s": read_s, "total_s": s_total},
            card=card,
            model_sha256=runtime.sha256,
            provider=runtime.provider,
            grid=transform,
        )
    logger.info(
        "segmented %s volume %s in %s mode: %d model calls, %.3f s inference, %.3f s total",
        image.source,
        "x".join(map(str, image.shape)),
        out.mode,
        out.stats.calls,
        out.stats.seconds,
        total,
    )
    return SegmentationResult(
        image=image,
        labels=out.labels,
        mode=out.mode,
        boxes=out.boxes,
        components=found,
        metrics=metrics,
        run=out.stats,
        timings={"read_s": read_s, "total_s": total},
        card=card,
        model_sha256=runtime.sha256,
        provider=runtime.provider,
        slices=slices_result,
        grid=transform,
    )


def _finish(
    out: InferenceOutput,
    image: Volume,
    settings: Settings,
    class_names: list[str],
    ref_labels: Optional[np.ndarray],
    *,
    min_score: Optional[float] = None,
) -> tuple[list[dict], Optional[dict]]:
    """Post-process ``out.labels`` in place (``msdn_core.postprocess``); its components and metrics.

    Proposals with a score volume (``MSDN_PROPOSAL_CONFIRMATION=segmentation``) are confirmed by the
    segmentation and their components kept from ``min_score`` (the operating threshold) up.
    """
    confirm = out.mode == "proposals" and out.score_volume is not None
    labels, found = postprocess(
        out.labels,
        spacing=image.spacing,
        class_names=class_names,
        min_volume_mm3=settings.min_component_mm3,
        candidate_boxes=[
            CandidateBox(c.label, tuple(b), c.score)  # type: ignore[arg-type]
            for c, b in zip(out.candidates, out.candidate_boxes, strict=True)
        ],
        keep_overlapping=settings.keep_candidate_components and out.mode == "proposals",
        score_volume=out.score_volume,
        score_scale=1.0 / 255.0,
        confirm=confirm,
        min_score=min_score if confirm else None,
        copy=False,
    )
    out.labels = labels
    metrics = (
        evaluate(out.labels, ref_labels, spacing=image.spacing, class_names=class_names)
        if ref_labels is not None
        else None
    )
    return found, metrics


class BoxSlices:
    """The slices a box-mode request's boxes touch, for a reader's ``slices`` option.

    Called by the reader with the volume's (Z, Y, X) shape and LPS affine once its header is read: the
    ``boxes`` JSON is parsed then (against that shape) and kept as :attr:`boxes` for the segmentation.
    When the model grid (``grid``) takes its slices across the input's (a sagittal or coronal input for
    an axial model), every slice is needed.
    """

    def __init__(
        self,
        boxes: str | Sequence[SliceBox],
        *,
        class_names: list[str],
        max_boxes: int,
        grid: Optional[ModelGrid] = None,
    ) -> None:
        self.boxes = boxes
        self.class_names = class_names
        self.max_boxes = max_boxes
        self.grid = grid

    def __call__(self, shape: tuple[int, int, int], affine: np.ndarray) -> Optional[list[int]]:
        if isinstance(self.boxes, str):
            if names_instances(self.boxes):  # their slices are known once the series is read: read all
                return None
            self.boxes = parse_boxes(
                self.boxes, shape=shape, class_names=self.class_names, max_boxes=self.max_boxes, affine=affine
            )
        if self.grid is not None and not self.grid.transform(shape, affine).slice_aligned:
            return None
        return sorted({b.slice for b in self.boxes}) if self.boxes else None


def box_slices(
    boxes: Optional[str | Sequence[SliceBox]], *, mode: str, runtime: ModelRuntime, settings: Settings
) -> Optional[BoxSlices]:
    """A :class:`BoxSlices` when the request is in box mode (boxes given, mode ``auto`` or ``boxes``), else None.

    Box mode reads only the slices its boxes touch: each box's crop lies on its own slice.
    """
    if mode not in ("auto", "boxes") or boxes is None or (isinstance(boxes, str) and not boxes.strip()):
        return None
    return BoxSlices(
        boxes,
        class_names=[c.name for c in runtime.card.classes],
        max_boxes=settings.max_boxes,
        grid=settings.model_grid(runtime.card),
    )


def segment_datasets(
    datasets: Sequence[Dataset] | Sequence[tuple[str, Dataset]],
    runtime: ModelRuntime,
    settings: Settings,
    *,
    series_uid: Optional[str] = None,
    boxes: Optional[str | Sequence[SliceBox]] = None,
    mode: str = "auto",
    reference: Optional[Volume | np.ndarray | Dataset] = None,
    deadline: Optional[Deadline] = None,
    read_s: float = 0.0,
    with_slices: bool = False,
) -> SegmentationResult:
    """Segment one DICOM series given as pydicom datasets (or (name, dataset) pairs).

    See ``segment_image`` for the options; ``series_uid`` picks a series when several are given;
    ``read_s`` is time already spent getting the datasets (added to the reported read time).
    """
    t0 = time.perf_counter() - read_s
    slices = box_slices(boxes, mode=mode, runtime=runtime, settings=settings)
    # Whole slices: decoded batch by batch while the model runs (Volume.load); boxes: the touched slices now.
    image = series_volume(datasets, settings=settings, series_uid=series_uid, slices=slices, lazy=slices is None)
    if deadline is not None:
        deadline.check()
    return segment_image(
        image,
        runtime,
        settings,
        boxes=slices.boxes if slices is not None else boxes,
        mode=mode,
        reference=reference,
        deadline=deadline,
        read_s=time.perf_counter() - t0,
        with_slices=with_slices,
    )


def render(result: SegmentationResult, fmt: OutputFormat, settings: Settings) -> tuple[bytes, str, str]:
    """The answer body of ``result`` as ``(bytes, media type, file name)``."""
    media_type, filename = MEDIA_TYPES[fmt]
    if fmt == "json":
        from service.outputs.report import build_report

        body = build_report(result, max_components=settings.max_components).model_dump_json().encode()
    elif fmt == "nifti":
        from service.outputs.nifti import nifti_bytes

        body = nifti_bytes(result.labels, result.image)
    elif fmt == "dicom-seg":
        if result.image.series is None:
            raise InvalidInput("a DICOM SEG answer needs DICOM input", code=ErrorCode.FORMAT_NEEDS_DICOM)
        from service.outputs.dicom_seg import seg_bytes

        body = seg_bytes(result, keep_empty_frames=settings.seg_keep_empty_frames)
    elif fmt == "png":
        from service.outputs.preview import preview_png

        body = preview_png(result)
    else:  # pragma: no cover - OutputFormat is a closed set
        raise InvalidInput(f"unknown format {fmt!r}", code=ErrorCode.INVALID_FORMAT)
    return body, media_type, filename
