"""Boxes: the detector's proposals (threshold, NMS); the box type and the ``boxes`` JSON dialect are
``msdn_core.boxes`` (re-exported here).
"""

from __future__ import annotations

import numpy as np

from msdn_core.boxes import SliceBox, parse_boxes

__all__ = ["SliceBox", "nms", "parse_boxes", "proposals"]


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression; indices of the kept boxes, best first.

    Args:
        boxes: (N, 4) [x1, y1, x2, y2].
        scores: (N,).
        iou_threshold: a box overlapping a kept one by more than this is dropped.
    """
    order = np.argsort(-scores, kind="stable")
    x1, y1, x2, y2 = boxes.T
    areas = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-12)
        order = rest[iou <= iou_threshold]
    return keep


def proposals(
    scores: np.ndarray,
    boxes: np.ndarray,
    *,
    slice_index: int,
    height: int,
    width: int,
    score_threshold: float,
    iou_threshold: float,
    max_count: int,
) -> list[SliceBox]:
    """Detector outputs of one slice to boxes: threshold, per-class NMS, clip to the image.

    Args:
        scores: (N, C) class scores in [0, 1].
        boxes: (N, 4) decoded [x1, y1, x2, y2] pixels (of the padded input).
    """
    out: list[SliceBox] = []
    for c in range(scores.shape[1]):
        sel = np.flatnonzero(scores[:, c] >= score_threshold)
        if not sel.size:
            continue
        b = boxes[sel].astype(np.float64)
        b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
        b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
        valid = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        b, s = b[valid], scores[sel, c][valid].astype(np.float64)
        for k in nms(b, s, iou_threshold):
            out.append(SliceBox(slice_index, *map(float, b[k]), label=c + 1, score=float(s[k]), source="detector"))
    out.sort(key=lambda bx: -(bx.score or 0.0))
    return out[:max_count]
