"""Anchor boxes of the Detection Unit.

Boxes are ``[x1, y1, x2, y2]`` in continuous pixel coordinates: pixel column ``j`` spans
``[j, j + 1)``, so a mask covering columns 10..20 has ``x1 = 10, x2 = 21``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch


def cell_anchors(size: float, scales: Sequence[float], ratios: Sequence[float]) -> torch.Tensor:
    """Anchors centred on the origin for one level.

    For each ratio r = h / w (outer loop) and scale s (inner loop): side = size * s,
    w = side / sqrt(r), h = side * sqrt(r).

    Returns:
        (A, 4) boxes ``[-w/2, -h/2, w/2, h/2]``, A = len(ratios) * len(scales).
    """
    rows = []
    for r in ratios:
        for s in scales:
            side = size * s
            w, h = side / math.sqrt(r), side * math.sqrt(r)
            rows.append([-w / 2, -h / 2, w / 2, h / 2])
    return torch.tensor(rows, dtype=torch.float32)


def grid_anchors(
    height: int,
    width: int,
    stride: int,
    size: float,
    scales: Sequence[float],
    ratios: Sequence[float],
    *,
    device: torch.device | None = None,
) -> torch.Tensor:
    """All anchors of a (height, width) feature map of the given stride.

    Anchor centres sit at pixel-grid cell centres ``((j + 0.5) * stride, (i + 0.5) * stride)``.

    Returns:
        (height * width * A, 4) boxes ordered by row i, column j, then anchor (the order of the
        Detection Unit's outputs after ``(B, A*K, H, W) -> (B, H, W, A, K)``).
    """
    base = cell_anchors(size, scales, ratios).to(device)
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
    return (shifts + base.reshape(1, -1, 4)).reshape(-1, 4)


def shape_anchors(shapes: Sequence[Sequence[float]]) -> torch.Tensor:
    """Cell anchors from explicit shapes ``(w, h)`` or ``(w, h, dx, dy)`` (centre moved by dx, dy).

    Returns:
        (A, 4) ``[dx - w/2, dy - h/2, dx + w/2, dy + h/2]``.
    """
    rows = []
    for shape in shapes:
        w, h = float(shape[0]), float(shape[1])
        dx, dy = (float(shape[2]), float(shape[3])) if len(shape) == 4 else (0.0, 0.0)
        rows.append([dx - w / 2, dy - h / 2, dx + w / 2, dy + h / 2])
    return torch.tensor(rows, dtype=torch.float32)


def shifted_anchors(
    height: int, width: int, stride: int, base: torch.Tensor, *, device: torch.device | None = None
) -> torch.Tensor:
    """``base`` (A, 4) cell anchors placed at every cell centre of a (height, width) map of ``stride``.

    Same order as ``grid_anchors``: row i, column j, then anchor.
    """
    base = base.to(device)
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) * stride
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) * stride
    cy, cx = torch.meshgrid(ys, xs, indexing="ij")
    shifts = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
    return (shifts + base.reshape(1, -1, 4)).reshape(-1, 4)
