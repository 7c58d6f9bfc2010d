"""One study through the ``/segment`` pipeline in this process (:func:`service.request.run_request`)."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path
from typing import Optional

from service.batch.inputs import Study
from service.concurrency import Deadline
from service.model import ModelRuntime
from service.pipeline import render
from service.request import run_request
from service.settings import Settings


def segment_local(
    study: Study,
    runtime: ModelRuntime,
    settings: Settings,
    *,
    formats: list[str],
    mode: str = "auto",
    boxes: Optional[str] = None,
    reference: Optional[str] = None,
    spacing: Optional[str] = None,
) -> dict[str, bytes]:
    """The answer bodies of ``study``, one per format (``json``, ``nifti``, ``dicom-seg``, ``png``).

    ``boxes`` / ``reference`` apply when the study has none of its own (a manifest case's).
    Raises the same ``MsdnError`` as ``POST /segment`` would answer.
    """
    with ExitStack() as stack:

        def named(path) -> tuple[str, object]:
            return (path.name, stack.enter_context(open(path, "rb")))

        ref_path = study.reference or reference
        result = run_request(
            Deadline(None),
            runtime=runtime,
            settings=settings,
            dicom=[named(p) for p in study.files] if study.kind in ("dicom", "zip") else [],
            volume=named(study.files[0]) if study.kind == "volume" else None,
            spacing=spacing if study.kind == "volume" else None,
            boxes=study.boxes or boxes,
            reference=named(Path(ref_path)) if ref_path else None,
            series_uid=study.series_uid,
            mode=mode,
        )
    return {fmt: render(result, fmt, settings)[0] for fmt in formats}
