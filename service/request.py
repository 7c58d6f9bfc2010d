"""One ``/segment`` request's blocking work: named files in, a ``SegmentationResult`` out.

Shared by ``POST /segment`` (in a limiter thread), the ``/v1/jobs`` workers (from the job's stored
files) and ``msdn segment`` (from files on disk), so all three read and segment the same way.
Torch-free and FastAPI-free.
"""

from __future__ import annotations

import time
from typing import BinaryIO, Optional

from service.concurrency import Deadline
from service.io.dicom import parse_dicom
from service.io.reference import read_reference_file
from service.io.upload import expand_files
from service.io.volume import read_volume
from service.model import ModelRuntime
from service.pipeline import SegmentationResult, box_slices, segment_datasets, segment_image
from service.settings import Settings


def run_request(
    deadline: Deadline,
    *,
    runtime: ModelRuntime,
    settings: Settings,
    dicom: list[tuple[str, BinaryIO]],
    volume: Optional[tuple[str, BinaryIO]],
    spacing: Optional[str],
    boxes: Optional[str],
    reference: Optional[tuple[str, BinaryIO]],
    series_uid: Optional[str],
    mode: str,
) -> SegmentationResult:
    """The blocking part of a request (runs in a limiter thread, or a job worker): read, segment."""
    t0 = time.perf_counter()
    ref = read_reference_file(reference[1], name=reference[0], settings=settings) if reference else None
    if dicom:
        files = expand_files(dicom, settings=settings)
        items = []
        for name, fh in files:
            # Headers now; pixel data stay in the upload (on disk past 1 MiB) until the reader
            # decodes the slices the request needs, and it closes each file once decoded.
            items.append((name, parse_dicom(fh, name=name, defer_pixels=True)))
            deadline.check()
        result = segment_datasets(
            items,
            runtime,
            settings,
            series_uid=series_uid,
            boxes=boxes,
            mode=mode,
            reference=ref,
            deadline=deadline,
            read_s=time.perf_counter() - t0,
        )
    else:
        assert volume is not None
        # Box mode: a NIfTI is read only where the boxes' slices lie (the boxes are parsed on its header).
        slices = box_slices(boxes, mode=mode, runtime=runtime, settings=settings)
        image = read_volume(volume[1], name=volume[0], spacing=spacing, settings=settings, slices=slices)
        result = segment_image(
            image,
            runtime,
            settings,
            boxes=slices.boxes if slices is not None else boxes,
            mode=mode,
            reference=ref,
            deadline=deadline,
            read_s=time.perf_counter() - t0,
        )
    return result
