"""Run a batch: outputs per study, skip finished studies, ``summary.csv``.

Output folder layout::

    OUT/summary.csv                      one row per study (this run's and skipped ones')
    OUT/<study>/segmentation.dcm         --format seg
    OUT/<study>/mask.nii.gz              --format nifti
    OUT/<study>/segmentation.json        --format json (always written: the summary is read from it)
    OUT/<study>/preview.png              --preview
    OUT/<study>/done.json                model SHA-256, formats, summary row: written last

A study is skipped when its ``done.json`` names the same model SHA-256 and every requested output
exists. A failed study writes ``error.json`` (code, message) and no ``done.json``, so a rerun tries it
again; one bad study never stops the batch.
"""

from __future__ import annotations

import csv
import json
import logging
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from msdn_core.errors import ErrorCode, MsdnError
from service.batch.inputs import Study

logger = logging.getLogger(__name__)

#: Command-line format name -> (pipeline format, output file name).
FORMATS: dict[str, tuple[str, str]] = {
    "seg": ("dicom-seg", "segmentation.dcm"),
    "nifti": ("nifti", "mask.nii.gz"),
    "json": ("json", "segmentation.json"),
    "png": ("png", "preview.png"),
}


@dataclass
class BatchOptions:
    """What every study of a batch gets (picklable: sent to worker processes)."""

    out: Path
    formats: list[str]
    model: Optional[Path] = None
    model_sha256: str = ""
    mode: str = "auto"
    boxes: Optional[str] = None
    reference: Optional[str] = None
    spacing: Optional[str] = None
    url: Optional[str] = None
    api_key: Optional[str] = None
    threads: int = 0
    settings: dict[str, Any] = field(default_factory=dict)


def _wanted(formats: list[str], study: Study) -> list[str]:
    """The formats written for ``study``: ``json`` always; a volume study gets NIfTI instead of a SEG."""
    if study.kind == "volume":
        formats = ["nifti" if f == "seg" else f for f in formats]
    return list(dict.fromkeys(["json", *formats]))


def is_done(study: Study, options: BatchOptions) -> Optional[dict]:
    """The summary row of a finished study with the same model and all outputs, else None."""
    study_dir = options.out / study.name
    marker = study_dir / "done.json"
    try:
        done = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if done.get("model_sha256") != options.model_sha256:
        return None
    if any(not (study_dir / FORMATS[f][1]).is_file() for f in _wanted(options.formats, study)):
        return None
    return done.get("row")


def summary_row(study: Study, report: dict, seconds: float) -> dict[str, Any]:
    """A ``summary.csv`` row from the JSON answer."""
    row: dict[str, Any] = {
        "study": study.name,
        "series": report["input"].get("series_instance_uid") or "",
        "mode": report["mode"],
        "seconds": round(seconds, 3),
        "error_code": "",
        "error": "",
    }
    for c in report["classes"]:
        row[f"{c['name']}_voxels"] = c["voxels"]
        row[f"{c['name']}_ml"] = round(c["volume_ml"], 4)
    metrics = report.get("metrics")
    if metrics:
        for c in metrics["classes"]:
            row[f"{c['name']}_dice"] = None if c["dice"] is None else round(c["dice"], 4)
            row[f"{c['name']}_hd95_mm"] = None if c["hd95_mm"] is None else round(c["hd95_mm"], 3)
        row["mean_dice"] = None if metrics.get("mean_dice") is None else round(metrics["mean_dice"], 4)
    return row


# --- worker side (one model per process) ----------------------------------------------------------

_STATE: dict[str, Any] = {}


def _key(options: BatchOptions) -> tuple:
    return (options.url, options.api_key, str(options.model), options.threads, tuple(sorted(options.settings.items())))


def _init_worker(options: BatchOptions) -> None:
    _STATE.clear()
    _STATE["key"] = _key(options)
    if options.url:
        from service.batch.client import Client

        _STATE["client"] = Client(options.url, api_key=options.api_key)
        return
    from service.model import ModelRuntime
    from service.settings import Settings

    settings = Settings(model_path=options.model, intra_op_threads=options.threads, warmup=False, **options.settings)
    _STATE["settings"] = settings
    _STATE["runtime"] = ModelRuntime.from_settings(settings)


def _bodies(study: Study, options: BatchOptions, formats: list[str]) -> dict[str, bytes]:
    pipeline_formats = [FORMATS[f][0] for f in formats]
    kwargs = dict(mode=options.mode, boxes=options.boxes, reference=options.reference, spacing=options.spacing)
    if options.url:
        client = _STATE["client"]
        return {fmt: client.segment(study, fmt=fmt, **kwargs) for fmt in pipeline_formats}
    from service.batch.local import segment_local

    return segment_local(study, _STATE["runtime"], _STATE["settings"], formats=pipeline_formats, **kwargs)


def run_study(study: Study, options: BatchOptions) -> dict[str, Any]:
    """Segment one study and write its outputs; the summary row (``error_code`` set on failure)."""
    if _STATE.get("key") != _key(options):
        _init_worker(options)
    study_dir = options.out / study.name
    t0 = time.perf_counter()
    formats = _wanted(options.formats, study)
    try:
        bodies = _bodies(study, options, formats)
    except MsdnError as exc:
        code = getattr(exc, "wire_code", None) or exc.code.value
        return _failed(study, study_dir, code, exc.message, time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - one bad study never stops the batch
        logger.exception("study %s: unexpected error", study.name)
        return _failed(study, study_dir, ErrorCode.INTERNAL_ERROR.value, f"{type(exc).__name__}: {exc}", 0.0)
    study_dir.mkdir(parents=True, exist_ok=True)
    for fmt in formats:
        (study_dir / FORMATS[fmt][1]).write_bytes(bodies[FORMATS[fmt][0]])
    row = summary_row(study, json.loads(bodies["json"]), time.perf_counter() - t0)
    (study_dir / "error.json").unlink(missing_ok=True)
    tmp = study_dir / ".done.json.tmp"
    tmp.write_text(json.dumps({"model_sha256": options.model_sha256, "formats": formats, "row": row}))
    os.replace(tmp, study_dir / "done.json")
    return row


def _failed(study: Study, study_dir: Path, code: str, message: str, seconds: float) -> dict[str, Any]:
    study_dir.mkdir(parents=True, exist_ok=True)
    (study_dir / "error.json").write_text(json.dumps({"code": code, "message": message}))
    (study_dir / "done.json").unlink(missing_ok=True)
    logger.warning("study %s failed: %s (%s)", study.name, message, code)
    return {
        "study": study.name,
        "series": study.series_uid or "",
        "mode": "",
        "seconds": round(seconds, 3),
        "error_code": code,
        "error": message,
    }


# --- the batch -----------------------------------------------------------------------------------


def run_batch(studies: list[Study], options: BatchOptions, *, workers: int = 1, progress: bool = True) -> list[dict]:
    """Run the studies (skipping finished ones), write ``summary.csv``; the rows in input order."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    from tqdm import tqdm

    options.out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict] = {}
    todo = []
    for study in studies:
        done = is_done(study, options)
        if done is not None:
            rows[study.name] = {**done, "skipped": True}
        else:
            todo.append(study)
    if todo and len(todo) < len(studies):
        logger.info("%d of %d studies already done with this model: skipped", len(studies) - len(todo), len(studies))
    bar = tqdm(total=len(todo), unit="study", disable=not progress)
    try:
        if workers == 1 or len(todo) <= 1:
            for study in todo:
                rows[study.name] = run_study(study, options)
                bar.update()
        else:
            # spawn, not fork: a forked ONNX Runtime (thread pools) can deadlock in the child
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(
                max_workers=workers, mp_context=context, initializer=_init_worker, initargs=(options,)
            ) as pool:
                futures = {pool.submit(run_study, s, options): s for s in todo}
                for future in as_completed(futures):
                    study = futures[future]
                    try:
                        rows[study.name] = future.result()
                    except Exception as exc:  # noqa: BLE001 - a worker that died
                        rows[study.name] = _failed(
                            study, options.out / study.name, ErrorCode.INTERNAL_ERROR.value, str(exc), 0.0
                        )
                    bar.update()
    finally:
        bar.close()
    ordered = [rows[s.name] for s in studies]
    write_summary(options.out / "summary.csv", ordered)
    return ordered


def write_summary(path: Path, rows: list[dict]) -> None:
    """``summary.csv``: fixed columns first, then per-class columns in first-seen order."""
    fixed = ["study", "series", "mode"]
    tail = ["seconds", "skipped", "error_code", "error"]
    extra: list[str] = []
    for row in rows:
        extra.extend(k for k in row if k not in fixed and k not in tail and k not in extra)
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fixed + extra + tail, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "skipped": "yes" if row.get("skipped") else ""})
