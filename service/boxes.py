"""Boxes: the box type and the ``boxes`` JSON dialect are ``msdn_core.boxes`` (re-exported here); the
detector's proposals (per-slice selection, 3D linking, 3D NMS) are ``msdn_core.proposals``.
"""

from __future__ import annotations

from msdn_core.boxes import SliceBox, names_instances, parse_boxes

__all__ = ["SliceBox", "names_instances", "parse_boxes"]
