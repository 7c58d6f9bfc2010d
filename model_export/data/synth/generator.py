"""Write a synthetic data set: volumes (NIfTI or DICOM series), masks (NIfTI) and the manifest."""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Union

import numpy as np

from model_export.data.manifest import MANIFEST_FORMAT_VERSION, SPLITS, boxes_from_mask
from model_export.data.synth import chest, cochlea, lung
from model_export.data.synth.common import SynthCase, case_rng
from model_export.data.volumes import write_nifti

log = logging.getLogger(__name__)

#: bumped whenever the same (task, seed, index, size, slices) would give different voxels; the latest
#: version is the default. Version 5 draws full-size chest series for ``lung`` (``synth.chest``);
#: version 4 (cut-outs around one nodule) stays reproducible with ``version=4``. Cochlea cases are
#: the same in both.
GENERATOR_VERSION = 5
VERSIONS = (4, 5)
#: lung version 5: the default in-plane size, and its split when none is given
FULL_DEFAULT_SIZE = 512
FULL_DEFAULT_SPLIT = {"train": 60, "val": 10, "test": 40}
FULL_DESCRIPTION = "synthetic full-size non-contrast chest CT series with 0-4 lung nodules (msdn synth v5)"


@dataclass(frozen=True)
class TaskSpec:
    """What a task draws and its paper-like defaults."""

    name: str
    module: Any
    default_split: Mapping[str, int]
    default_size: int
    default_slices: int
    min_slices: int
    description: str
    window: tuple[float, float]
    body_part: str


TASKS: dict[str, TaskSpec] = {
    "lung": TaskSpec(
        "lung",
        lung,
        {"train": 160, "val": 80, "test": 80},
        192,
        32,
        8,
        "synthetic non-contrast chest CT cut-outs around one lung nodule (msdn synth)",
        (-600.0, 1500.0),
        "CHEST",
    ),
    "cochlea": TaskSpec(
        "cochlea",
        cochlea,
        {"train": 66, "val": 40, "test": 40},
        192,
        24,
        12,
        "synthetic non-contrast temporal-bone CT cut-outs around the cochlea (msdn synth)",
        (500.0, 4000.0),
        "HEAD",
    ),
}

MIN_SIZE = 128
MAX_SIZE = 1024
MAX_SLICES = 512

NumCases = Union[None, int, Mapping[str, int]]


def _task(task: str) -> TaskSpec:
    if task not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
    return TASKS[task]


def _check_version(version: int) -> int:
    if isinstance(version, bool) or version not in VERSIONS:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    return int(version)


def _full(task: str, version: int) -> bool:
    """Whether (task, version) draws full-size chest series."""
    return task == "lung" and version >= 5


def resolve_split(task: str, num_cases: NumCases = None, *, version: int = 4) -> dict[str, int]:
    """Case counts per split: the task's paper split, N cases in its proportions, or explicit counts.

    Full-size lung series (version 5) default to ``FULL_DEFAULT_SPLIT`` (60/10/40).

    Raises:
        ValueError: N < 3, a negative count, an unknown split name, or no case at all.
    """
    spec = _task(task)
    if num_cases is None:
        return dict(FULL_DEFAULT_SPLIT if _full(task, version) else spec.default_split)
    if isinstance(num_cases, Mapping):
        unknown = set(num_cases) - set(SPLITS)
        if unknown:
            raise ValueError(f"num_cases: unknown split(s) {sorted(unknown)}, use {SPLITS}")
        out = {s: num_cases.get(s, 0) for s in SPLITS}
        for s, n in out.items():
            if isinstance(n, bool) or not isinstance(n, int) or n < 0:
                raise ValueError(f"num_cases[{s!r}] must be a non-negative integer, got {n!r}")
        if sum(out.values()) < 1:
            raise ValueError("num_cases: need at least one case")
        return out
    if isinstance(num_cases, bool) or not isinstance(num_cases, int) or num_cases < 3:
        raise ValueError(f"num_cases must be an integer >= 3 (one case per split) or a dict, got {num_cases!r}")
    total = sum(spec.default_split.values())
    val = max(1, round(num_cases * spec.default_split["val"] / total))
    test = max(1, round(num_cases * spec.default_split["test"] / total))
    return {"train": num_cases - val - test, "val": val, "test": test}


def parse_split(text: str) -> dict[str, int]:
    """``"160/80/80"`` -> {"train": 160, "val": 80, "test": 80}."""
    parts = text.split("/")
    if len(parts) != 3 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"split must look like TRAIN/VAL/TEST, e.g. 160/80/80, got {text!r}")
    return dict(zip(SPLITS, (int(p) for p in parts), strict=True))


def _check_size(
    spec: TaskSpec, size: Optional[int], slices: Optional[int], version: int = 4
) -> tuple[int, Optional[int]]:
    full = _full(spec.name, version)
    size = (FULL_DEFAULT_SIZE if full else spec.default_size) if size is None else size
    if slices is None and not full:
        slices = spec.default_slices
    min_slices = chest.MIN_SLICES if full else spec.min_slices
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size must be an integer in {MIN_SIZE}..{MAX_SIZE} (in-plane pixels), got {size!r}")
    if slices is not None and (
        isinstance(slices, bool) or not isinstance(slices, int) or not min_slices <= slices <= MAX_SLICES
    ):
        raise ValueError(f"slices must be an integer in {min_slices}..{MAX_SLICES} for {spec.name}, got {slices!r}")
    return size, slices


def generate_case(
    task: str,
    index: int,
    *,
    seed: int = 0,
    size: Optional[int] = None,
    slices: Optional[int] = None,
    version: int = GENERATOR_VERSION,
) -> SynthCase:
    """Draw case ``index`` of ``task``; it depends only on (task, seed, index, size, slices, version).

    Args:
        task: ``"lung"`` or ``"cochlea"``.
        index: case number (>= 0); case ids are ``f"{task}_{index:03d}"``.
        seed: data set seed.
        size: in-plane pixels (Y = X), >= 128; default 192, or 512 for full-size lung series (v5).
        slices: number of axial slices; default lung 32, cochlea 24; full-size lung series (v5) draw
            80..160 per case when None.
        version: generator version (4: lung cut-outs around one nodule; 5: full-size lung series).
    """
    spec = _task(task)
    version = _check_version(version)
    size, slices = _check_size(spec, size, slices, version)
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"index must be a non-negative integer, got {index!r}")
    module = chest if _full(task, version) else spec.module
    return module.make_case(case_rng(seed, spec.module.TASK_CODE, index), size=size, slices=slices)


def case_id(task: str, index: int) -> str:
    """The manifest id of case ``index``."""
    return f"{task}_{index:03d}"


def _write_one(job: tuple) -> dict[str, Any]:
    task, index, split, seed, size, slices, out_dir, dicom, with_boxes, version = job
    spec = TASKS[task]
    description = FULL_DESCRIPTION if _full(task, version) else spec.description
    t0 = time.perf_counter()
    case = generate_case(task, index, seed=seed, size=size, slices=slices, version=version)
    t_gen = time.perf_counter() - t0
    cid = case_id(task, index)
    out_dir = Path(out_dir)
    affine = case.ras_affine()
    if dicom:
        from model_export.data.synth.dicom_writer import write_ct_series

        image_rel = f"dicom/{cid}"
        if (out_dir / image_rel).is_dir():  # a series left by an earlier run would mix with this one
            shutil.rmtree(out_dir / image_rel)
        write_ct_series(
            out_dir / image_rel,
            case.image,
            spacing=case.spacing,
            origin=case.origin,
            key=f"msdn-synth/{task}/{seed}/{index}/{size}/{slices}",
            patient_id=f"SYNTH-{cid.upper()}",
            description=description[:64],
            window=spec.window,
            body_part=spec.body_part,
        )
    else:
        image_rel = f"images/{cid}.nii.gz"
        write_nifti(out_dir / image_rel, case.image, affine=affine)
    mask_rel = f"masks/{cid}.nii.gz"
    write_nifti(out_dir / mask_rel, case.mask, affine=affine)
    entry: dict[str, Any] = {"id": cid, "split": split, "image": image_rel, "mask": mask_rel}
    if with_boxes:
        entry["boxes"] = [
            {"slice": b.z, "box": [int(v) for v in b.box], "label": b.label} for b in boxes_from_mask(case.mask)
        ]
    entry["meta"] = dict(case.meta, shape_zyx=list(case.shape), spacing_zyx=[round(s, 5) for s in case.spacing])
    entry["_seconds"] = (t_gen, time.perf_counter() - t0)
    return entry


def generate(
    task: str,
    out_dir: str | os.PathLike,
    *,
    num_cases: NumCases = None,
    seed: int = 0,
    size: Optional[int] = None,
    slices: Optional[int] = None,
    dicom: bool = False,
    boxes: bool = False,
    workers: int = 1,
    progress: Optional[Callable[[int, int], None]] = None,
    version: int = GENERATOR_VERSION,
) -> Path:
    """Generate a data set and return the path of its ``manifest.json``; see the package docstring."""
    spec = _task(task)
    version = _check_version(version)
    counts = resolve_split(task, num_cases, version=version)
    size, slices = _check_size(spec, size, slices, version)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    splits = [s for s in SPLITS for _ in range(counts[s])]
    jobs = [
        (task, i, s, seed, size, slices, str(out_dir), bool(dicom), bool(boxes), version) for i, s in enumerate(splits)
    ]
    t0 = time.perf_counter()
    entries: list[dict[str, Any]] = []
    if workers == 1 or len(jobs) < 2:
        results = map(_write_one, jobs)
        pool = None
    else:
        pool = ProcessPoolExecutor(max_workers=min(workers, len(jobs)))
        results = pool.map(_write_one, jobs, chunksize=1 if _full(task, version) else 4)
    try:
        for entry in results:
            entries.append(entry)
            if progress is not None:
                progress(len(entries), len(jobs))
            if len(entries) % 20 == 0 or len(entries) == len(jobs):
                log.info("%s: %d/%d cases written", task, len(entries), len(jobs))
    finally:
        if pool is not None:
            pool.shutdown()
    gen_s = [e.pop("_seconds")[0] for e in entries]
    elapsed = time.perf_counter() - t0
    description = FULL_DESCRIPTION if _full(task, version) else spec.description
    shown_slices = slices if slices is not None else "{}-{}".format(*chest.SLICES_RANGE)
    manifest = {
        "format_version": MANIFEST_FORMAT_VERSION,
        "name": f"synthetic-{task}",
        "description": f"{description}; seed {seed}, {size}x{size}x{shown_slices}",
        "modality": "CT",
        "classes": [dict(c) for c in spec.module.CLASSES],
        "generator": {
            "tool": "msdn synth",
            "version": version,
            "task": task,
            "seed": seed,
            "size": size,
            "slices": slices,
            "dicom": bool(dicom),
            "split": counts,
        },
        "cases": entries,
    }
    path = out_dir / "manifest.json"
    path.write_text(json.dumps(manifest, indent=1) + "\n")
    log.info(
        "%s: %d cases in %.1f s (%.2f s/case drawing, median; %d worker(s)) -> %s",
        task,
        len(entries),
        elapsed,
        float(np.median(gen_s)) if gen_s else 0.0,
        workers,
        path,
    )
    return path
