"""Detector boxes of single slices merged into 3D nodule candidates. Numpy only.

The detector of an MSDN model works on axial slices: for each slice it gives scored boxes
``[x1, y1, x2, y2]`` (pixels). A nodule spans several slices, so its boxes are linked into one 3D
candidate (:func:`link_slices`), and overlapping candidates are reduced by a 3D NMS
(:func:`nms_3d`). Steps, per class:

1. **Threshold + 2D NMS per slice** (:func:`select_slice_boxes`): boxes scoring at least
   ``score_threshold`` are kept (the best 1000 of them), then greedy NMS at ``nms_iou`` (a box
   overlapping a better kept box by IoU > ``nms_iou`` is dropped) until ``max_per_slice`` are kept.
2. **Linking across slices** (:func:`link_slices`): slices are visited in order. Each box of slice z
   (best score first) extends the open track whose box on slice ``z - 1 - g`` (a gap of
   ``g <= max_gap`` slices with no box is allowed) overlaps it most with IoU >= ``link_iou``; a track
   takes at most one box per slice; a box that extends no track opens a new one. A track not
   extended for more than ``max_gap`` slices is closed.
3. **Candidates**: a track becomes a :class:`Candidate` with the union box of its slice boxes, the
   z range ``[first slice, last slice + 1)``, and as score the largest of its slice scores. Tracks
   with fewer than ``min_slices`` boxes are dropped.
4. **3D NMS** (:func:`nms_3d`): candidates by descending score; one overlapping a kept candidate by
   3D IoU > ``nms_iou_3d`` is dropped; at most ``max_candidates`` are kept.

Boxes use the continuous pixel convention: column ``j`` spans ``[j, j + 1)``, a 3D box
``[x1, y1, z1, x2, y2, z2]`` covers slices ``z1 <= z < z2``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np


def box_iou(a: Sequence[float], b: np.ndarray) -> np.ndarray:
    """IoU of box ``a`` [x1, y1, x2, y2] with each row of ``b`` (N, 4); 0 for empty unions."""
    b = np.asarray(b, np.float64).reshape(-1, 4)
    w = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    h = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = w * h
    area_a = max(a[2] - a[0], 0) * max(a[3] - a[1], 0)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    union = area_a + area_b - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_keep: Optional[int] = None) -> list[int]:
    """Greedy 2D non-maximum suppression; indices of the kept boxes, best first.

    Args:
        boxes: (N, 4) [x1, y1, x2, y2].
        scores: (N,).
        iou_threshold: a box overlapping a kept one by IoU > this is dropped.
        max_keep: stop once this many are kept (the same first ones as without it).
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
    keep: list[int] = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        order = rest[box_iou(boxes[i], boxes[rest]) <= iou_threshold]
    return keep


def box3d_iou(a: Sequence[float], b: Sequence[float]) -> float:
    """IoU of two 3D boxes [x1, y1, z1, x2, y2, z2]."""
    inter = 1.0
    for lo, hi in ((0, 3), (1, 4), (2, 5)):
        side = min(a[hi], b[hi]) - max(a[lo], b[lo])
        if side <= 0:
            return 0.0
        inter *= side
    vol_a = float(np.prod([a[hi] - a[lo] for lo, hi in ((0, 3), (1, 4), (2, 5))]))
    vol_b = float(np.prod([b[hi] - b[lo] for lo, hi in ((0, 3), (1, 4), (2, 5))]))
    return inter / (vol_a + vol_b - inter)


@dataclass(frozen=True)
class ScoredBox:
    """A detector box on one slice."""

    slice: int
    box: tuple[float, float, float, float]
    score: float


@dataclass
class Candidate:
    """A 3D candidate: linked slice boxes of one class.

    Attributes:
        label: class value (1..C).
        score: the largest slice score.
        boxes: the slice boxes, by slice.
    """

    label: int
    score: float
    boxes: list[ScoredBox] = field(default_factory=list)

    @property
    def z_range(self) -> tuple[int, int]:
        """``(first slice, last slice + 1)``."""
        return self.boxes[0].slice, self.boxes[-1].slice + 1

    @property
    def box3d(self) -> list[float]:
        """Union box ``[x1, y1, z1, x2, y2, z2]``."""
        arr = np.array([b.box for b in self.boxes], np.float64)
        z1, z2 = self.z_range
        return [float(arr[:, 0].min()), float(arr[:, 1].min()), float(z1)] + [
            float(arr[:, 2].max()),
            float(arr[:, 3].max()),
            float(z2),
        ]

    @property
    def centre(self) -> tuple[float, float, float]:
        """Centre ``(x, y, z)`` of the union box, continuous pixel coordinates."""
        b = self.box3d
        return ((b[0] + b[3]) / 2.0, (b[1] + b[4]) / 2.0, (b[2] + b[5]) / 2.0)


def select_slice_boxes(
    scores: np.ndarray,
    boxes: np.ndarray,
    *,
    score_threshold: float,
    nms_iou: float,
    max_per_slice: int,
    height: Optional[int] = None,
    width: Optional[int] = None,
    pre_nms_top: int = 1000,
) -> list[np.ndarray]:
    """Step 1 on one slice: per class, the boxes kept (best first).

    Args:
        scores: (N, C) class scores in [0, 1].
        boxes: (N, 4) boxes [x1, y1, x2, y2] in pixels.
        score_threshold, nms_iou, max_per_slice: see the module docstring.
        pre_nms_top: only the best this many boxes above the threshold enter the NMS.
        height, width: when given, boxes are clipped to the image first and empty ones dropped.

    Returns:
        One array per class of (K, 5) rows ``[x1, y1, x2, y2, score]``.
    """
    scores = np.asarray(scores)
    scores = scores.reshape(scores.shape[0], -1)
    boxes = np.asarray(boxes).reshape(-1, 4)
    out = []
    for c in range(scores.shape[1]):
        # Only the boxes over the threshold are gathered (np.take: ~10x faster than boxes[sel] on a
        # stride-1 level's rows), clipped and checked coordinate by coordinate in their own dtype
        # (clipping to integer bounds and comparing are exact in float32 too), and only the few that
        # enter the NMS become float64: the same numbers as clipping a float64 copy of every row.
        column = scores[:, c].astype(np.float64)
        sel = np.flatnonzero(column >= score_threshold)
        s = column[sel]
        picked = np.take(boxes, sel, axis=0)
        x1, y1, x2, y2 = (picked[:, k] for k in range(4))
        if width is not None:
            x1, x2 = np.clip(x1, 0, width), np.clip(x2, 0, width)
        if height is not None:
            y1, y2 = np.clip(y1, 0, height), np.clip(y2, 0, height)
        idx = np.flatnonzero((x2 > x1) & (y2 > y1))
        s = s[idx]
        if s.size > pre_nms_top:  # the best pre_nms_top only (a stride-1 level has H x W x A anchors)
            top = np.argpartition(-s, pre_nms_top - 1)[:pre_nms_top]
            idx, s = idx[top], s[top]
        b = np.stack([x1[idx], y1[idx], x2[idx], y2[idx]], axis=1).astype(np.float64)
        keep = nms(b, s, nms_iou, max_keep=max_per_slice)
        out.append(np.concatenate([b[keep], s[keep, None]], axis=1) if keep else np.zeros((0, 5)))
    return out


def link_slices(
    per_slice: Sequence[tuple[int, np.ndarray]],
    *,
    label: int = 1,
    link_iou: float = 0.2,
    max_gap: int = 0,
    min_slices: int = 1,
) -> list[Candidate]:
    """Steps 2-3: link boxes of one class across slices into candidates (module docstring).

    Args:
        per_slice: ``(slice index, (K, 5) rows [x1, y1, x2, y2, score])`` in any order.
        label: class value of the candidates.
        link_iou: least IoU of a box with the track's last box to extend the track.
        max_gap: slices without a box a track may skip.
        min_slices: least boxes of a candidate.

    Returns:
        Candidates by descending score.
    """
    if link_iou < 0 or max_gap < 0 or min_slices < 1:
        raise ValueError(f"need link_iou >= 0, max_gap >= 0, min_slices >= 1, got {link_iou}, {max_gap}, {min_slices}")
    open_tracks: list[Candidate] = []
    closed: list[Candidate] = []
    for z, rows in sorted(per_slice, key=lambda item: item[0]):
        rows = np.asarray(rows, np.float64).reshape(-1, 5)
        still_open = []
        for t in open_tracks:
            (closed if t.boxes[-1].slice < z - 1 - max_gap else still_open).append(t)
        open_tracks = still_open
        # The tracks open before this slice (those opened on it end on it and are never linked to
        # again here); one IoU row per box against all their last boxes, best box first.
        last = np.array([t.boxes[-1].box for t in open_tracks], np.float64).reshape(-1, 4)
        free = np.array([t.boxes[-1].slice < z for t in open_tracks], bool)
        for r in rows[np.argsort(-rows[:, 4], kind="stable")]:
            box = tuple(float(v) for v in r[:4])
            best = None
            if free.any():
                iou = box_iou(box, last)
                ok = free & (iou >= link_iou) & (iou > 0)
                if ok.any():
                    best = int(np.argmax(np.where(ok, iou, -1.0)))  # the first of equal IoUs, as a scan would
            scored = ScoredBox(int(z), box, float(r[4]))  # type: ignore[arg-type]
            if best is None:
                open_tracks.append(Candidate(label, scored.score, [scored]))
            else:
                t = open_tracks[best]
                t.boxes.append(scored)
                t.score = max(t.score, scored.score)
                free[best] = False
    tracks = [t for t in closed + open_tracks if len(t.boxes) >= min_slices]
    tracks.sort(key=lambda t: -t.score)
    return tracks


def nms_3d(candidates: Sequence[Candidate], *, iou_threshold: float, max_count: int) -> list[Candidate]:
    """Step 4: greedy 3D NMS over candidates (of one class), best first, at most ``max_count``."""
    kept: list[Candidate] = []
    for cand in sorted(candidates, key=lambda c: -c.score):
        if len(kept) >= max_count:
            break
        if all(box3d_iou(cand.box3d, k.box3d) <= iou_threshold for k in kept):
            kept.append(cand)
    return kept


@dataclass(frozen=True)
class ProposalSettings:
    """The knobs of the merge (service settings ``MSDN_PROPOSAL_*``; module docstring)."""

    score_threshold: float = 0.5
    nms_iou: float = 0.3
    max_per_slice: int = 20
    link_iou: float = 0.2
    max_gap: int = 1
    min_slices: int = 1
    nms_iou_3d: float = 0.2
    max_candidates: int = 50

    def __post_init__(self) -> None:
        for name in ("score_threshold", "nms_iou", "link_iou", "nms_iou_3d"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        for name, low in (("max_per_slice", 1), ("max_gap", 0), ("min_slices", 1), ("max_candidates", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{name} must be >= {low}, got {getattr(self, name)!r}")


def select_detections(
    scores: np.ndarray,
    boxes: np.ndarray,
    settings: ProposalSettings,
    *,
    height: Optional[int] = None,
    width: Optional[int] = None,
) -> list[np.ndarray]:
    """Step 1 on one slice with ``settings``: per class, (K, 5) rows ``[x1, y1, x2, y2, score]``.

    Meant to run as each slice's detector outputs arrive, so that only the few kept boxes are held
    (a stride-1 detection level gives H x W x A anchors per slice).
    """
    return select_slice_boxes(
        scores,
        boxes,
        score_threshold=settings.score_threshold,
        nms_iou=settings.nms_iou,
        max_per_slice=settings.max_per_slice,
        height=height,
        width=width,
    )


def link_candidates(selected: Sequence[Sequence[np.ndarray]], settings: ProposalSettings) -> list[Candidate]:
    """Steps 2-4: the per-slice selections (slices 0..Z-1, per class) to 3D candidates.

    Returns:
        Candidates of all classes by descending score (at most ``max_candidates`` per class).
    """
    num_classes = max((len(rows) for rows in selected), default=0)
    out: list[Candidate] = []
    for c in range(num_classes):
        per_slice = [(z, rows[c]) for z, rows in enumerate(selected) if len(rows) > c and len(rows[c])]
        linked = link_slices(
            per_slice,
            label=c + 1,
            link_iou=settings.link_iou,
            max_gap=settings.max_gap,
            min_slices=settings.min_slices,
        )
        out += nms_3d(linked, iou_threshold=settings.nms_iou_3d, max_count=settings.max_candidates)
    out.sort(key=lambda c: -c.score)
    return out


def merge_detections(
    detections: Sequence[tuple[np.ndarray, np.ndarray]],
    settings: ProposalSettings,
    *,
    height: Optional[int] = None,
    width: Optional[int] = None,
) -> list[Candidate]:
    """All steps: per-slice detector outputs ``(scores (N, C), boxes (N, 4))`` of slices 0..Z-1 to candidates.

    Returns:
        Candidates of all classes by descending score (at most ``max_candidates`` per class).
    """
    selected = [select_detections(scores, boxes, settings, height=height, width=width) for scores, boxes in detections]
    return link_candidates(selected, settings)


__all__ = [
    "Candidate",
    "ProposalSettings",
    "ScoredBox",
    "box3d_iou",
    "box_iou",
    "link_candidates",
    "link_slices",
    "merge_detections",
    "nms",
    "nms_3d",
    "select_detections",
    "select_slice_boxes",
]
