"""The one box type and the one box JSON dialect (``POST /segment``'s ``boxes`` field and manifests).

The dialect is a JSON list (or an object ``{"boxes": [...]}``). Each item is either a per-slice box

    {"slice": 12, "box": [x1, y1, x2, y2], "label": 1}

or a 3D box spanning slices

    {"box": [x1, y1, z1, x2, y2, z2], "label": "nodule"}

(``"box3d"`` is accepted as another name of the 6-number ``"box"``, as older manifests write it), or
what a viewer knows: a box on the DICOM instance it was drawn on

    {"sop_instance_uid": "1.2.840...", "box": [x1, y1, x2, y2]}

(pixel coordinates of that image; DICOM input only), or a box in patient coordinates

    {"box_mm": [x1, y1, z1, x2, y2, z2], "label": 1}

(two opposite corners in LPS mm, DICOM's patient frame; the voxels whose centres lie inside it, through
the input's affine: the answer's ``input.affine_lps``).
Coordinates are continuous pixel coordinates of the (Z, Y, X) volume: column j spans [j, j+1), row i
spans [i, i+1), slice k spans [k, k+1); so a box [10, 5, 21, 8] covers columns 10..20 and rows 5..7,
and a 3D box with z1=3, z2=6 covers slices 3, 4 and 5 (it is expanded to one :class:`SliceBox` per
slice). ``label`` (optional) is a class value 1..C or a class name; in the service, with it only that
class is kept inside the box. ``slice`` counts from 0 in the sorted volume (for DICOM input: by
position along the slice normal, the order of the answer's mask).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from msdn_core.errors import ErrorCode, InvalidBoxes, LimitExceeded


@dataclass(frozen=True)
class SliceBox:
    """A box on one slice: [x1, y1, x2, y2] in pixels, optional class and detector score."""

    slice: int
    x1: float
    y1: float
    x2: float
    y2: float
    label: Optional[int] = None
    score: Optional[float] = None
    source: str = field(default="request", compare=False)  # where it came from: request, manifest, mask, detector

    @property
    def xyxy(self) -> list[float]:
        """[x1, y1, x2, y2]."""
        return [self.x1, self.y1, self.x2, self.y2]

    @property
    def z(self) -> int:
        """The slice (training code's name for it)."""
        return self.slice

    @property
    def box(self) -> tuple[float, float, float, float]:
        """(x1, y1, x2, y2)."""
        return (self.x1, self.y1, self.x2, self.y2)

    def pixel_region(self) -> tuple[slice, slice]:
        """(rows, columns) of the pixels the box touches."""
        return (
            slice(math.floor(self.y1), math.ceil(self.y2)),
            slice(math.floor(self.x1), math.ceil(self.x2)),
        )


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise InvalidBoxes(f"{where} must be a finite number, got {value!r}")
    return float(value)


def _label(value: Any, where: str, class_names: Sequence[str]) -> Optional[int]:
    if value is None:
        return None
    if isinstance(value, str):
        if value in class_names:
            return list(class_names).index(value) + 1
        if value.isdigit():
            value = int(value)
        else:
            raise InvalidBoxes(f"{where}: label {value!r} is not a class of this model {list(class_names)}")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= len(class_names):
        raise InvalidBoxes(f"{where}: label must be a class value 1..{len(class_names)} or a class name, got {value!r}")
    return int(value)


def _decoded(data: Optional[str | list | dict]) -> list:
    if data is None or (isinstance(data, str) and not data.strip()):
        return []
    items = data
    if isinstance(data, str):
        try:
            items = json.loads(data)
        except json.JSONDecodeError as exc:
            raise InvalidBoxes(f"boxes is not valid JSON ({exc.msg} at position {exc.pos})") from None
    if isinstance(items, dict) and "boxes" in items:
        items = items["boxes"]
    if not isinstance(items, list):
        raise InvalidBoxes('boxes must be a JSON list of {"slice": z, "box": [x1, y1, x2, y2]} items')
    return items


def names_instances(data: Optional[str | list | dict]) -> bool:
    """Whether some box is given by ``sop_instance_uid`` (its slice is known once the series is read)."""
    try:
        return any(isinstance(item, dict) and "sop_instance_uid" in item for item in _decoded(data))
    except InvalidBoxes:
        return False


def _mm_to_pixels(values: list[float], affine: np.ndarray) -> list[float]:
    """An LPS mm box (two corners) as continuous pixel coordinates [x1, y1, z1, x2, y2, z2] of the voxels
    whose centres it holds (index i's voxel spans [i, i + 1))."""
    corners = np.array([[x, y, z, 1.0] for x in values[0::3] for y in values[1::3] for z in values[2::3]])
    index = (np.linalg.inv(np.asarray(affine, np.float64)) @ corners.T)[:3]
    low, high = np.ceil(index.min(axis=1) - 1e-6), np.floor(index.max(axis=1) + 1e-6) + 1.0
    return [float(v) for v in (*low, *high)]


def parse_boxes(
    data: Optional[str | list | dict],
    *,
    class_names: Sequence[str],
    shape: Optional[tuple[int, int, int]] = None,
    max_boxes: Optional[int] = None,
    default_label: Optional[int] = None,
    source: str = "request",
    affine: Optional[np.ndarray] = None,
    sop_instance_uids: Optional[Sequence[str]] = None,
) -> list[SliceBox]:
    """Parse boxes in the dialect of the module docstring (JSON text or already decoded).

    Args:
        data: the JSON text, or its decoded list / ``{"boxes": [...]}`` object; None or blank: no boxes.
        class_names: the classes 1..C (labels may be values or names).
        shape: the (Z, Y, X) volume; when given, boxes must lie inside it.
        max_boxes: most slice boxes (after expanding 3D boxes); more raise ``LimitExceeded``.
        default_label: label of items without one (None: all classes).
        source: recorded on each box.
        affine: the volume's LPS affine of voxel indices (x, y, z), for ``box_mm`` items.
        sop_instance_uids: the SOP Instance UID of each slice, for ``sop_instance_uid`` items.

    Raises:
        InvalidBoxes: malformed JSON or items, or a box outside the volume (the message names it).
        LimitExceeded: more than ``max_boxes`` slice boxes (code ``too_many_boxes``).
    """
    items = _decoded(data)
    out: list[SliceBox] = []
    for i, item in enumerate(items):
        where = f"boxes[{i}]"
        if not isinstance(item, dict) or sum(k in item for k in ("box", "box3d", "box_mm")) != 1:
            raise InvalidBoxes(f"{where} must be an object with a 'box' list (or one 'box_mm')")
        unknown = set(item) - {"slice", "box", "box3d", "box_mm", "label", "sop_instance_uid"}
        if unknown:
            raise InvalidBoxes(f"{where} has unknown keys {sorted(unknown)}")
        item = _resolved(item, where, affine=affine, sop_instance_uids=sop_instance_uids)
        coords = item["box"] if "box" in item else item["box3d"]
        sizes = (4, 6) if "box" in item else (6,)
        if not isinstance(coords, list) or len(coords) not in sizes:
            raise InvalidBoxes(f"{where}.box must be [x1, y1, x2, y2] (with 'slice') or [x1, y1, z1, x2, y2, z2]")
        values = [_number(v, f"{where}.box[{j}]") for j, v in enumerate(coords)]
        label = _label(item.get("label", default_label), where, class_names)
        if len(values) == 4:
            if "slice" not in item:
                raise InvalidBoxes(f"{where}: a 2D box needs 'slice'")
            z = item["slice"]
            if isinstance(z, bool) or not isinstance(z, int) or z < 0:
                raise InvalidBoxes(f"{where}.slice must be a non-negative integer, got {z!r}")
            if shape is not None and not z < shape[0]:
                raise InvalidBoxes(f"{where}.slice {z} is outside the volume's {shape[0]} slices (0..{shape[0] - 1})")
            x1, y1, x2, y2 = values
            slices = [z]
        else:
            if "slice" in item:
                raise InvalidBoxes(f"{where}: a 3D box carries its slices; leave out 'slice'")
            x1, y1, z1, x2, y2, z2 = values
            top = shape[0] if shape is not None else math.inf
            if not (0 <= z1 < z2 <= top):
                raise InvalidBoxes(f"{where}: z range [{z1:g}, {z2:g}] must satisfy 0 <= z1 < z2 <= {top}")
            slices = list(range(math.floor(z1), math.ceil(z2)))
        if not (x1 < x2 and y1 < y2):
            raise InvalidBoxes(f"{where}: need x1 < x2 and y1 < y2, got {[x1, y1, x2, y2]}")
        if shape is not None and not (0 <= x1 and x2 <= shape[2] and 0 <= y1 and y2 <= shape[1]):
            raise InvalidBoxes(
                f"{where}: box {[x1, y1, x2, y2]} is outside the {shape[2]} x {shape[1]} (width x height) image"
            )
        out.extend(SliceBox(z, x1, y1, x2, y2, label, source=source) for z in slices)
        if max_boxes is not None and len(out) > max_boxes:
            raise LimitExceeded(f"more than {max_boxes} slice boxes (MSDN_MAX_BOXES)", code=ErrorCode.TOO_MANY_BOXES)
    return out


def _resolved(
    item: dict, where: str, *, affine: Optional[np.ndarray], sop_instance_uids: Optional[Sequence[str]]
) -> dict:
    """``item`` with a ``sop_instance_uid`` turned into its ``slice`` and a ``box_mm`` into a pixel ``box``."""
    if "sop_instance_uid" in item:
        if "slice" in item or "box" not in item or not isinstance(item["box"], list) or len(item["box"]) != 4:
            raise InvalidBoxes(f"{where}: a box on an instance is {{'sop_instance_uid', 'box': [x1, y1, x2, y2]}}")
        if not sop_instance_uids:
            raise InvalidBoxes(f"{where}: 'sop_instance_uid' needs DICOM input (single-frame instances)")
        uid = str(item["sop_instance_uid"])
        if uid not in sop_instance_uids:
            raise InvalidBoxes(f"{where}: SOP Instance UID {uid} is not an instance of the input series")
        item = {k: v for k, v in item.items() if k != "sop_instance_uid"}
        item["slice"] = list(sop_instance_uids).index(uid)
    if "box_mm" in item:
        if "slice" in item:
            raise InvalidBoxes(f"{where}: a 'box_mm' carries its slices; leave out 'slice'")
        coords = item["box_mm"]
        if not isinstance(coords, list) or len(coords) != 6:
            raise InvalidBoxes(f"{where}.box_mm must be [x1, y1, z1, x2, y2, z2] in LPS mm")
        if affine is None:
            raise InvalidBoxes(f"{where}: 'box_mm' needs an input with a geometry (not .npy without one)")
        values = [_number(v, f"{where}.box_mm[{j}]") for j, v in enumerate(coords)]
        pixels = _mm_to_pixels(values, affine)
        if not all(low < high for low, high in zip(pixels[:3], pixels[3:], strict=True)):
            raise InvalidBoxes(f"{where}: box_mm {values} holds no voxel centre of the input")
        item = {k: v for k, v in item.items() if k != "box_mm"}
        item["box"] = pixels
    return item


__all__ = ["SliceBox", "names_instances", "parse_boxes"]
