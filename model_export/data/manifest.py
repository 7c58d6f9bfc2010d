"""The data set manifest: cases with a dense mask ("strong") or only boxes ("weak").

A manifest is a JSON file; relative paths are resolved against its folder::

    {
      "format_version": 1,
      "name": "synthetic-lung",
      "description": "free text kept in checkpoints and model cards",
      "modality": "CT",
      "classes": [{"value": 1, "name": "nodule"}],
      "cases": [
        {"id": "lung_000", "split": "train", "image": "images/lung_000.nii.gz",
         "mask": "masks/lung_000.nii.gz"},
        {"id": "lung_001", "split": "train", "image": "dicom/lung_001",
         "boxes": [{"slice": 12, "box": [40, 52, 61, 70], "label": 1},
                   {"box3d": [40, 52, 10, 61, 70, 15], "label": 1}]}
      ]
    }

``image`` is a NIfTI file or a folder with one DICOM series; ``mask`` a NIfTI label volume with
integers ``0..C`` on the image grid. A case with a mask is strong; a case with only ``boxes`` is weak.
Boxes are in the one box dialect of ``msdn_core.boxes`` (the service's ``boxes`` field): 2D boxes
``[x1, y1, x2, y2]`` on slice ``slice`` (continuous pixel coordinates, x2/y2 exclusive); 3D boxes
``"box": [x1, y1, z1, x2, y2, z2]`` (or ``"box3d"``) are expanded to every slice z1 <= z < z2; a box
without ``label`` is class 1. ``split`` is
``train``, ``val`` or ``test``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import numpy as np

from msdn_core.boxes import SliceBox, parse_boxes
from msdn_core.errors import InvalidBoxes

SPLITS = ("train", "val", "test")
MANIFEST_FORMAT_VERSION = 1


class ManifestError(ValueError):
    """The manifest or one of its cases is invalid; the message names the case."""


@dataclass
class Case:
    """One image with either a mask (strong) or boxes (weak)."""

    id: str
    split: str
    image: Path
    mask: Optional[Path] = None
    boxes: list[SliceBox] = field(default_factory=list)

    @property
    def strong(self) -> bool:
        """True when the case has a dense mask."""
        return self.mask is not None

    def as_weak(self) -> "Case":
        """The same case with its mask dropped; boxes are derived from the mask when it has none.

        Used by the experiment protocol to turn strong cases into weak ones.
        """
        if not self.strong or self.boxes:
            return replace(self, mask=None)
        from model_export.data.volumes import read_volume

        return replace(self, mask=None, boxes=boxes_from_mask(read_volume(self.mask, dtype=np.int16).array))


@dataclass
class Manifest:
    """A parsed manifest."""

    path: Path
    name: str
    classes: list[dict[str, Any]]
    cases: list[Case]
    description: str = ""
    modality: str = "CT"

    @property
    def num_classes(self) -> int:
        """Foreground classes C."""
        return len(self.classes)

    @property
    def class_names(self) -> list[str]:
        """Names for label values 1..C."""
        return [c["name"] for c in sorted(self.classes, key=lambda c: c["value"])]

    def split(self, name: str) -> list[Case]:
        """Cases of one split, in manifest order."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {name!r}")
        return [c for c in self.cases if c.split == name]


def boxes_from_mask(mask: np.ndarray) -> list[SliceBox]:
    """Per-slice 2D boxes of each connected component of each class in a (Z, Y, X) label volume."""
    from scipy import ndimage

    out: list[SliceBox] = []
    for z in range(mask.shape[0]):
        sl = mask[z]
        for value in np.unique(sl):
            if value == 0:
                continue
            comps, _ = ndimage.label(sl == value)
            for ys, xs in ndimage.find_objects(comps):
                out.append(SliceBox(z, xs.start, ys.start, xs.stop, ys.stop, int(value), source="mask"))
    return out


def _parse_boxes(case_id: str, raw: Any, class_names: list[str]) -> list[SliceBox]:
    """The case's boxes in the one box dialect (``msdn_core.boxes``); a box without label is class 1."""
    if not isinstance(raw, list):
        raise ManifestError(f"case {case_id}: 'boxes' must be a list")
    try:
        return parse_boxes(raw, class_names=class_names, default_label=1, source="manifest")
    except InvalidBoxes as exc:
        raise ManifestError(f"case {case_id}: {exc}") from None


def parse_manifest(data: dict[str, Any], *, root: Path, path: Optional[Path] = None) -> Manifest:
    """Validate the structure of a manifest dict (files are checked by ``validate_files``)."""
    if not isinstance(data, dict):
        raise ManifestError("manifest must be a JSON object")
    if data.get("format_version", MANIFEST_FORMAT_VERSION) != MANIFEST_FORMAT_VERSION:
        raise ManifestError(f"unsupported manifest format_version {data.get('format_version')!r}")
    classes = data.get("classes") or [{"value": 1, "name": "target"}]
    values = sorted(c.get("value") for c in classes if isinstance(c, dict))
    if len(values) != len(classes) or values != list(range(1, len(classes) + 1)):
        raise ManifestError("classes must be objects with values 1..C and names")
    raw_cases = data.get("cases")
    if not isinstance(raw_cases, list) or not raw_cases:
        raise ManifestError("manifest has no cases")
    cases, seen = [], set()
    for i, rc in enumerate(raw_cases):
        if not isinstance(rc, dict):
            raise ManifestError(f"case #{i}: must be an object")
        cid = str(rc.get("id", f"#{i}"))
        if cid in seen:
            raise ManifestError(f"case {cid}: duplicate id")
        seen.add(cid)
        split = rc.get("split")
        if split not in SPLITS:
            raise ManifestError(f"case {cid}: split must be one of {SPLITS}, got {split!r}")
        if not rc.get("image"):
            raise ManifestError(f"case {cid}: missing 'image'")
        mask = root / rc["mask"] if rc.get("mask") else None
        boxes = _parse_boxes(
            cid, rc.get("boxes", []), [str(c["name"]) for c in sorted(classes, key=lambda c: c["value"])]
        )
        if mask is None and "boxes" not in rc:
            raise ManifestError(f"case {cid}: needs a 'mask' (strong) or 'boxes' (weak; [] for a case without target)")
        cases.append(Case(cid, split, root / rc["image"], mask, boxes))
    return Manifest(
        path=path or root / "manifest.json",
        name=str(data.get("name", "dataset")),
        classes=[dict(c) for c in classes],
        cases=cases,
        description=str(data.get("description", "")),
        modality=str(data.get("modality", "CT")),
    )


def geometry_mismatch(image_affine: np.ndarray, mask_affine: np.ndarray, spacing) -> str:
    """Why two affines of the same grid disagree (orientation or origin), or "" when they agree.

    Direction cosines must agree within 1e-3 and the origins within a tenth of the smallest voxel.
    """
    a, b = np.asarray(image_affine, dtype=np.float64), np.asarray(mask_affine, dtype=np.float64)
    da = a[:3, :3] / np.linalg.norm(a[:3, :3], axis=0, keepdims=True)
    db = b[:3, :3] / np.linalg.norm(b[:3, :3], axis=0, keepdims=True)
    if not np.allclose(da, db, atol=1e-3):
        return f"orientation {np.round(db, 3).tolist()} != image {np.round(da, 3).tolist()}"
    tol = 0.1 * float(min(spacing))
    if np.max(np.abs(a[:3, 3] - b[:3, 3])) > tol:
        return f"origin {np.round(b[:3, 3], 3).tolist()} mm != image {np.round(a[:3, 3], 3).tolist()} mm"
    return ""


def validate_files(manifest: Manifest) -> None:
    """Open every case and check files, shapes, geometry, labels and boxes; raises ``ManifestError``."""
    from model_export.data.volumes import read_volume
    from msdn_core.errors import MsdnError

    for case in manifest.cases:
        try:
            image = read_volume(case.image)
        except MsdnError as exc:
            raise ManifestError(f"case {case.id}: image: {exc}") from exc
        z, h, w = image.shape
        if case.mask is not None:
            try:
                mask = read_volume(case.mask, dtype=np.float32)
            except MsdnError as exc:
                raise ManifestError(f"case {case.id}: mask: {exc}") from exc
            if mask.shape != image.shape:
                raise ManifestError(f"case {case.id}: mask shape {mask.shape} != image shape {image.shape}")
            if not np.allclose(mask.spacing, image.spacing, rtol=1e-3, atol=1e-3):
                raise ManifestError(f"case {case.id}: mask spacing {mask.spacing} != image spacing {image.spacing}")
            problem = geometry_mismatch(image.affine, mask.affine, image.spacing)
            if problem:
                raise ManifestError(f"case {case.id}: mask geometry differs from the image: {problem}")
            values = np.unique(mask.array)
            if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
                raise ManifestError(f"case {case.id}: mask has non-integer values; labels must be integers 0..C")
            bad = np.setdiff1d(values.astype(np.int64), np.arange(manifest.num_classes + 1))
            if bad.size:
                raise ManifestError(f"case {case.id}: mask has labels {bad.tolist()} outside 0..{manifest.num_classes}")
        for b in case.boxes:
            x1, y1, x2, y2 = b.box
            if not (0 <= b.z < z and 0 <= x1 and 0 <= y1 and x2 <= w and y2 <= h):
                shown = "[" + ", ".join(f"{v:g}" for v in b.box) + "]"
                raise ManifestError(
                    f"case {case.id}: box {shown} on slice {b.z} is outside the image (Z, Y, X) = {(z, h, w)}"
                )


def load_manifest(path: str | os.PathLike, *, check_files: bool = True) -> Manifest:
    """Read, validate and return a manifest; ``check_files`` also opens every volume."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest not found: {path}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from exc
    manifest = parse_manifest(data, root=path.parent, path=path)
    if check_files:
        validate_files(manifest)
    return manifest
