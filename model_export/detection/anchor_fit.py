"""Anchor shapes fitted to the training boxes, and anchor recall.

``fit_anchor_shapes`` picks, for each detection level, ``per_level`` anchors that together match as
many training boxes as possible at IoU >= 0.5 (the RetinaNet positive threshold), by greedy set
cover: the candidates are the most frequent box sizes (w, h) of the training set on every level,
plus, on the stride-1 level, the same sizes shifted by half a pixel (an anchor centred on a pixel
corner: boxes of even width or height have their centre there, and a centred anchor of a 2-pixel box
is 0.5 px off, IoU 0.39 at best). Each round takes the (level, candidate) that matches the most boxes
not matched yet; levels whose slots are left when nothing more can be gained get the most frequent
sizes at least twice their stride (else multiples of the level's largest anchor). Small boxes end
up on the fine levels by themselves (an anchor up to half a stride from a box centre loses IoU).

An anchor is ``(w, h)`` or ``(w, h, dx, dy)`` pixels: its centre is the cell centre moved by
(dx, dy).

``anchor_recall`` is the share of boxes that some anchor of the whole grid matches at IoU >= 0.5:
what the detector can learn to find without relying on the matcher's low-quality fallback.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from model_export.detection.anchors import shape_anchors

#: candidate centre shifts on a stride-1 level (pixels)
HALF_SHIFTS = ((0.0, 0.0), (-0.5, 0.0), (0.0, -0.5), (-0.5, -0.5))


def fit_anchor_shapes(
    boxes: np.ndarray,
    *,
    strides: Sequence[int],
    per_level: int,
    threshold: float = 0.5,
    max_boxes: int = 3000,
    max_candidates: int = 120,
    seed: int = 0,
) -> tuple[tuple[tuple[float, float, float, float], ...], ...]:
    """Per-level anchors ``((w, h, dx, dy), ...)`` fitted to ``boxes`` (see module docstring).

    Args:
        boxes: (N, 4) ``[x1, y1, x2, y2]`` training boxes (pixel frame of their slice).
        strides: stride of each detection level (result in the same order).
        per_level: anchors A per level.
        threshold: IoU that counts as a match.
        max_boxes: boxes used for the fit (a seeded subsample beyond).
        max_candidates: most frequent distinct sizes tried.
        seed: subsampling seed.

    Raises:
        ValueError: no box, a box without area, or bad counts.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if per_level < 1 or not strides:
        raise ValueError(f"need strides and per_level >= 1, got {strides}, {per_level}")
    wh = np.stack([b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)
    if not len(b) or np.any(wh <= 0):
        raise ValueError("boxes must hold at least one box with positive width and height")
    if len(b) > max_boxes:
        pick = np.random.default_rng(seed).choice(len(b), max_boxes, replace=False)
        b, wh = b[pick], wh[pick]
    sizes, counts = np.unique(np.round(wh * 2) / 2, axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")[:max_candidates]
    sizes = sizes[order]
    cands: list[tuple[int, tuple[float, float, float, float]]] = []
    for li, stride in enumerate(strides):
        shifts = HALF_SHIFTS if stride == 1 else ((0.0, 0.0),)
        for w, h in sizes:
            for dx, dy in shifts:
                cands.append((li, (float(w), float(h), dx, dy)))
    hits = np.stack(
        [
            best_anchor_iou(b, strides=[strides[li]], cell_anchors=[shape_anchors([shape])]) >= threshold
            for li, shape in cands
        ]
    )  # (K, N)
    slots = [per_level] * len(strides)
    chosen: list[list[tuple[float, float, float, float]]] = [[] for _ in strides]
    covered = np.zeros(len(b), dtype=bool)
    used = np.zeros(len(cands), dtype=bool)
    while any(slots):
        gain = (hits & ~covered).sum(axis=1)
        gain[used | np.array([slots[li] == 0 for li, _ in cands])] = -1
        k = int(np.argmax(gain))
        if gain[k] <= 0:
            break
        li, shape = cands[k]
        chosen[li].append(shape)
        slots[li] -= 1
        used[k] = True
        covered |= hits[k]
    for li, stride in enumerate(strides):  # free slots: the most frequent sizes that suit the level's stride
        for w, h in sizes:
            if len(chosen[li]) >= per_level:
                break
            shape = (float(w), float(h), 0.0, 0.0)
            if min(w, h) >= 2 * stride and shape not in chosen[li]:
                chosen[li].append(shape)
        while len(chosen[li]) < per_level:
            base = chosen[li][-1] if chosen[li] else (4.0 * stride, 4.0 * stride, 0.0, 0.0)
            chosen[li].append((base[0] * 1.5, base[1] * 1.5, 0.0, 0.0))
    return tuple(tuple(sorted(level, key=lambda s: s[0] * s[1])) for level in chosen)


def best_anchor_iou(boxes: np.ndarray, *, strides: Sequence[int], cell_anchors: Sequence[torch.Tensor]) -> np.ndarray:
    """(N,) best IoU of each box (N, 4) ``[x1, y1, x2, y2]`` with any anchor of an unbounded grid.

    Anchors of a level of stride s sit at cell centres ``((j + 0.5) s, (i + 0.5) s)``; only the 3 x 3
    cells around a box centre can hold its best anchor, so only those are compared.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    best = np.zeros(len(b))
    if not len(b):
        return best
    cx, cy = (b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    for stride, base in zip(strides, cell_anchors, strict=True):
        base = np.asarray(base, dtype=np.float64).reshape(-1, 4)
        for dj in (-1, 0, 1):
            for di in (-1, 0, 1):
                ax = (np.floor(cx / stride) + dj + 0.5) * stride
                ay = (np.floor(cy / stride) + di + 0.5) * stride
                x1 = ax[:, None] + base[None, :, 0]
                y1 = ay[:, None] + base[None, :, 1]
                x2 = ax[:, None] + base[None, :, 2]
                y2 = ay[:, None] + base[None, :, 3]
                iw = np.clip(np.minimum(x2, b[:, None, 2]) - np.maximum(x1, b[:, None, 0]), 0, None)
                ih = np.clip(np.minimum(y2, b[:, None, 3]) - np.maximum(y1, b[:, None, 1]), 0, None)
                inter = iw * ih
                union = area_b[:, None] + (x2 - x1) * (y2 - y1) - inter
                best = np.maximum(best, (inter / np.maximum(union, 1e-9)).max(axis=1))
    return best


def anchor_recall(
    boxes: np.ndarray,
    *,
    strides: Sequence[int],
    cell_anchors: Sequence[torch.Tensor],
    threshold: float = 0.5,
) -> float:
    """Share of ``boxes`` (N, 4) with an anchor at IoU >= ``threshold`` (NaN for no box)."""
    best = best_anchor_iou(boxes, strides=strides, cell_anchors=cell_anchors)
    return float(np.mean(best >= threshold)) if len(best) else float("nan")


__all__ = ["anchor_recall", "best_anchor_iou", "fit_anchor_shapes", "shape_anchors"]
