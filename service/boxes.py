"""Boxes: the ``boxes`` field of ``POST /segment`` (detector proposals: ``msdn_core.proposals``).

The field is a JSON list. Each item is either a per-slice box

    {"slice": 12, "box": [x1, y1, x2, y2], "label": 1}

or a 3D box spanning slices

    {"box": [x1, y1, z1, x2, y2, z2], "label": "nodule"}

in continuous pixel coordinates of the (Z, Y, X) volume: column j spans [j, j+1), row i spans
[i, i+1), slice k spans [k, k+1); so a box [10, 5, 21, 8] covers columns 10..20 and rows 5..7, and a
3D box with z1=3, z2=6 covers slices 3, 4 and 5. ``label`` (optional) is a class value 1..C or a class
name; with it only that class is kept inside the box. ``slice`` counts from 0 in the sorted volume
(for DICOM input: by position along the slice normal, the order of the answer's mask).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from service.errors import InvalidBoxes, LimitExceeded


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
    source: str = "request"

    @property
    def xyxy(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]

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
            return class_names.index(value) + 1
        if value.isdigit():
            value = int(value)
        else:
            raise InvalidBoxes(f"{where}: label {value!r} is not a class of this model {list(class_names)}")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= len(class_names):
        raise InvalidBoxes(f"{where}: label must be a class value 1..{len(class_names)} or a class name, got {value!r}")
    return int(value)


def parse_boxes(
    text: Optional[str], *, shape: tuple[int, int, int], class_names: Sequence[str], max_boxes: int
) -> list[SliceBox]:
    """Parse and check the ``boxes`` field against a (Z, Y, X) volume (see module docstring).

    Raises:
        InvalidBoxes: malformed JSON or items, or a box outside the volume (the message names it).
        LimitExceeded: more than ``max_boxes`` slice boxes.
    """
    if text is None or not text.strip():
        return []
    try:
        items = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidBoxes(f"boxes is not valid JSON ({exc.msg} at position {exc.pos})") from None
    if isinstance(items, dict) and "boxes" in items:
        items = items["boxes"]
    if not isinstance(items, list):
        raise InvalidBoxes('boxes must be a JSON list of {"slice": z, "box": [x1, y1, x2, y2]} items')
    depth, height, width = shape
    out: list[SliceBox] = []
    for i, item in enumerate(items):
        where = f"boxes[{i}]"
        if not isinstance(item, dict) or "box" not in item:
            raise InvalidBoxes(f"{where} must be an object with a 'box' list")
        unknown = set(item) - {"slice", "box", "label"}
        if unknown:
            raise InvalidBoxes(f"{where} has unknown keys {sorted(unknown)}")
        coords = item["box"]
        if not isinstance(coords, list) or len(coords) not in (4, 6):
            raise InvalidBoxes(f"{where}.box must be [x1, y1, x2, y2] (with 'slice') or [x1, y1, z1, x2, y2, z2]")
        values = [_number(v, f"{where}.box[{j}]") for j, v in enumerate(coords)]
        label = _label(item.get("label"), where, class_names)
        if len(values) == 4:
            if "slice" not in item:
                raise InvalidBoxes(f"{where}: a 2D box needs 'slice'")
            z = item["slice"]
            if isinstance(z, bool) or not isinstance(z, int):
                raise InvalidBoxes(f"{where}.slice must be an integer, got {z!r}")
            if not 0 <= z < depth:
                raise InvalidBoxes(f"{where}.slice {z} is outside the volume's {depth} slices (0..{depth - 1})")
            x1, y1, x2, y2 = values
            slices = [z]
        else:
            if "slice" in item:
                raise InvalidBoxes(f"{where}: a 3D box carries its slices; leave out 'slice'")
            x1, y1, z1, x2, y2, z2 = values
            if not (0 <= z1 < z2 <= depth):
                raise InvalidBoxes(f"{where}: z range [{z1:g}, {z2:g}] must satisfy 0 <= z1 < z2 <= {depth}")
            slices = list(range(math.floor(z1), math.ceil(z2)))
        if not (x1 < x2 and y1 < y2):
            raise InvalidBoxes(f"{where}: need x1 < x2 and y1 < y2, got {[x1, y1, x2, y2]}")
        if not (0 <= x1 and x2 <= width and 0 <= y1 and y2 <= height):
            raise InvalidBoxes(
                f"{where}: box {[x1, y1, x2, y2]} is outside the {width} x {height} (width x height) image"
            )
        out.extend(SliceBox(z, x1, y1, x2, y2, label) for z in slices)
        if len(out) > max_boxes:
            raise LimitExceeded(f"more than {max_boxes} slice boxes (MSDN_MAX_BOXES)", code="too_many_boxes")
    return out
