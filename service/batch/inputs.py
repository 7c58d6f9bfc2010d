"""The studies of ``msdn segment INPUT...``.

* a file ``.zip``: one study (its DICOM members; ``--series-uid`` picks one of several series);
* a file ``.nii``, ``.nii.gz``, ``.nrrd``, ``.npy``: one volume study;
* a file ``.json``: a manifest (``docs/data.md``): one study per case, its ``mask`` as the reference and
  its ``boxes`` (``box3d`` becomes the API's 6-number ``box``) as the boxes;
* a folder with files in it: its DICOM files (searched recursively), one study per SeriesInstanceUID
  (files whose header cannot be read stay in a study of their own, so the pipeline reports them), or
  its volume files, one study each;
* a folder with only sub-folders: each sub-folder (and file) as an input of its own.

Study names are the file or folder name (plus ``_<n>`` per extra series), unique in the batch.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

import pydicom
from pydicom.errors import InvalidDicomError

from msdn_core.errors import ErrorCode, InvalidInput

logger = logging.getLogger(__name__)

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".npy")


@dataclass
class Study:
    """One unit of work: DICOM files of one series, a zip, or one volume file.

    Attributes:
        name: unique name in the batch (names the output folder).
        kind: ``dicom`` (``files``), ``zip`` (``files[0]``) or ``volume`` (``files[0]``).
        files: input paths.
        series_uid: the series to segment (known for split folders, or given).
        reference: reference mask path, or None.
        boxes: the API's box JSON text, or None.
    """

    name: str
    kind: str
    files: list[Path]
    series_uid: Optional[str] = None
    reference: Optional[Path] = None
    boxes: Optional[str] = None
    source: str = field(default="")


def is_volume(path: Path) -> bool:
    return path.name.lower().endswith(VOLUME_SUFFIXES)


def _stem(path: Path) -> str:
    name = path.name
    for suffix in sorted(VOLUME_SUFFIXES + (".zip", ".json"), key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _visible(path: Path) -> bool:
    return not path.name.startswith(".") and path.name.upper() != "DICOMDIR"


#: ``_series_of`` for a file that is not DICOM
NOT_DICOM = "\0not-dicom"


def _series_of(path: Path) -> Optional[str]:
    """The file's SeriesInstanceUID; None for DICOM without one (the reader groups those by geometry);
    :data:`NOT_DICOM` for anything else."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "SOPClassUID"])
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, AttributeError):
        return NOT_DICOM
    uid = ds.get("SeriesInstanceUID")
    return str(uid) if uid else None


def _folder_studies(folder: Path) -> list[Study]:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _visible(p))
    volumes = [p for p in files if is_volume(p)]
    if volumes:
        return [Study(_stem(p), "volume", [p], source=str(p)) for p in volumes]
    groups: dict[Optional[str], list[Path]] = {}
    for path in files:
        groups.setdefault(_series_of(path), []).append(path)
    if len(groups) > 1 and NOT_DICOM in groups:  # a LICENSE or README beside the series: not a study
        skipped = groups.pop(NOT_DICOM)
        logger.info("%d file(s) that are not DICOM left out of a DICOM folder", len(skipped))
    studies = []
    for i, (uid, paths) in enumerate(sorted(groups.items(), key=lambda kv: (kv[0] is None, kv[0] or ""))):
        name = folder.name if i == 0 else f"{folder.name}_{i + 1}"
        uid = None if uid == NOT_DICOM else uid  # a folder of no DICOM: the reader says why (not_dicom)
        studies.append(Study(name, "dicom", paths, series_uid=uid, source=str(folder)))
    return studies


def _manifest_studies(path: Path) -> list[Study]:
    try:
        data = json.loads(path.read_text())
        cases = data["cases"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise InvalidInput(f"{path.name}: not a readable manifest ({exc})", code=ErrorCode.INVALID_INPUT) from None
    studies = []
    for case in cases:
        image = path.parent / case["image"]
        found = _input_studies(image)
        boxes = None
        if case.get("boxes"):
            boxes = json.dumps(
                [
                    {"box": b["box3d"], "label": b.get("label", 1)}
                    if "box3d" in b
                    else {"slice": b["slice"], "box": b["box"], "label": b.get("label", 1)}
                    for b in case["boxes"]
                ]
            )
        for study in found:
            study.name = str(case.get("id", study.name)) if len(found) == 1 else study.name
            study.reference = path.parent / case["mask"] if case.get("mask") else None
            study.boxes = boxes
            studies.append(study)
    return studies


def _input_studies(path: Path) -> list[Study]:
    if path.is_dir():
        children = [p for p in sorted(path.iterdir()) if _visible(p)]
        if children and all(p.is_dir() for p in children):
            return [s for child in children for s in _input_studies(child)]
        return _folder_studies(path)
    low = path.name.lower()
    if low.endswith(".zip"):
        return [Study(_stem(path), "zip", [path], source=str(path))]
    if low.endswith(".json"):
        return _manifest_studies(path)
    if is_volume(path):
        return [Study(_stem(path), "volume", [path], source=str(path))]
    return [Study(path.name, "dicom", [path], source=str(path))]


def find_studies(inputs: Iterable[str | Path]) -> list[Study]:
    """The studies of the command's inputs, with unique names (module docstring).

    Raises:
        FileNotFoundError: an input that does not exist.
    """
    studies: list[Study] = []
    for item in inputs:
        path = Path(item)
        if not path.exists():
            raise FileNotFoundError(f"input {str(path)!r} does not exist")
        studies.extend(_input_studies(path))
    seen: dict[str, int] = {}
    for study in studies:
        base = study.name or "study"
        count = seen.get(base, 0)
        seen[base] = count + 1
        study.name = base if count == 0 else f"{base}_{count + 1}"
    return studies
