"""Box-supervised segmentation loss: emptiness, tightness prior and box size as inequality constraints.

Kervadec et al. 2020, "Bounding boxes for weakly supervised segmentation: Global constraints get close
to full supervision" (MIDL). For a box-only (weak) row with softmax probabilities ``s_c`` of class
``c`` and the boxes of that class on the slice (``B_c``, their union ``U_c``):

- **emptiness**: nothing of class ``c`` outside its boxes, ``sum_{p not in U_c} s_c(p) <= 0`` (one
  constraint per row and foreground class; a class without a box on the row must be absent).
- **tightness prior**: the object touches every line crossing its box. The box's rows are cut into
  consecutive horizontal bands of ``band_width`` lines (the last band may have fewer), likewise its
  columns into vertical bands; for a band of ``n`` lines, ``sum_{p in band, p in box} s_c(p) >= n``,
  i.e. ``n - sum <= 0``.
- **box size** (optional, ``size_bounds=(a, b)``): ``a |box| <= sum_{p in box} s_c(p) <= b |box|``,
  i.e. ``a |box| - sum <= 0`` and ``sum - b |box| <= 0``. The paper uses ``(0.5, 0.9)``.

Each constraint ``z <= 0`` (``z`` in pixels) is imposed with the **log-barrier extension** of
Kervadec et al. ("Constrained deep networks: Lagrangian optimization via log-barrier extensions",
2019), a convex, continuous and continuously differentiable penalty defined everywhere::

    psi_t(z) = -(1/t) log(-z)                      if z <= -1/t^2
             =  t z - (1/t) log(1/t^2) + 1/t       otherwise

The parameter ``t`` starts at ``t`` and is multiplied by ``t_growth`` every epoch (paper: 5 and 1.1),
so the barrier approaches a hard constraint as training goes on. Each part is the sum of
``psi_t`` over its constraints divided by the patch area ``H W`` and averaged over the rows (the
per-pixel scale the authors' code uses for the size and emptiness terms). Defaults follow the
paper: band width 5, ``t`` 5, growth 1.1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from msdn_core.boxes import SliceBox

#: Parts of ``BoxConstraintLoss`` output, besides the weighted sum ``box``.
PARTS = ("box_empty", "box_tight", "box_size")


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def log_barrier_extension(z: torch.Tensor, t: float) -> torch.Tensor:
    """Element-wise log-barrier extension ``psi_t(z)`` of the constraint ``z <= 0`` (see module docstring).

    Both pieces and their first derivatives (``t`` at the joint) meet at ``z = -1/t^2``.

    Args:
        z: constraint values, any shape (``z <= 0`` is satisfied).
        t: barrier parameter, > 0.

    Returns:
        ``psi_t(z)``, the shape of ``z``.

    Raises:
        ValueError: ``t`` not > 0.
    """
    t = _positive("t", t)
    joint = -1.0 / t**2
    inside = z <= joint
    safe = torch.where(inside, -z, torch.ones_like(z))  # log of a positive value in both branches (no NaN grad)
    barrier = -torch.log(safe) / t
    linear = t * z + (2.0 * math.log(t) + 1.0) / t  # -(1/t) log(1/t^2) = 2 log(t) / t
    return torch.where(inside, barrier, linear)


def _box_region(box: Sequence[float], height: int, width: int) -> tuple[slice, slice] | None:
    """(rows, columns) a continuous [x1, y1, x2, y2] box covers on an H x W patch; None when empty."""
    ys, xs = SliceBox(0, *(float(v) for v in box)).pixel_region()
    ys = slice(max(ys.start, 0), min(ys.stop, height))
    xs = slice(max(xs.start, 0), min(xs.stop, width))
    if ys.stop <= ys.start or xs.stop <= xs.start:
        return None
    return ys, xs


def _band_sums(lines: torch.Tensor, band_width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sums of consecutive groups of ``band_width`` line sums (n,) and the lines in each group."""
    n = lines.shape[0]
    bands = -(-n // band_width)
    padded = torch.nn.functional.pad(lines, (0, bands * band_width - n))
    counts = torch.full((bands,), float(band_width), dtype=lines.dtype, device=lines.device)
    counts[-1] = n - (bands - 1) * band_width
    return padded.reshape(bands, band_width).sum(dim=1), counts


def constraint_values(
    probs: torch.Tensor,
    targets: Sequence[dict],
    *,
    band_width: int = 5,
    size_bounds: tuple[float, float] | None = None,
) -> list[dict[str, torch.Tensor]]:
    """The constraint values ``z`` (pixels; ``z <= 0`` is satisfied) of every row.

    Args:
        probs: (B, C+1, H, W) softmax probabilities (channel 0 = background, not constrained).
        targets: per row ``{"boxes": (G, 4) [x1, y1, x2, y2] patch pixels, "labels": (G,) ints in 1..C}``.
        band_width: lines per tightness band.
        size_bounds: ``(a, b)`` fractions of the box area, or None for no size constraint.

    Returns:
        Per row ``{"empty": (C,), "tight": (K,), "size": (2G,)}`` (``size`` empty without
        ``size_bounds``; boxes with no pixel on the patch are skipped).

    Raises:
        ValueError: ``probs`` not 4-D, or ``targets`` not one per row.
    """
    if probs.dim() != 4:
        raise ValueError(f"probs must be (B, C+1, H, W), got shape {tuple(probs.shape)}")
    if len(targets) != probs.shape[0]:
        raise ValueError(f"targets must hold one entry per row ({probs.shape[0]}), got {len(targets)}")
    _, channels, height, width = probs.shape
    out = []
    for row, target in zip(probs, targets, strict=True):
        boxes = torch.as_tensor(target["boxes"]).reshape(-1, 4).tolist()
        labels = torch.as_tensor(target["labels"]).reshape(-1).tolist()
        inside = torch.zeros((channels, height, width), dtype=torch.bool, device=probs.device)
        tight: list[torch.Tensor] = []
        size: list[torch.Tensor] = []
        for box, label in zip(boxes, labels, strict=True):
            c = int(label)
            if not 1 <= c < channels:
                raise ValueError(f"box label {c} outside 1..{channels - 1}")
            region = _box_region(box, height, width)
            if region is None:
                continue
            ys, xs = region
            inside[c, ys, xs] = True
            crop = row[c, ys, xs]
            for lines in (crop.sum(dim=1), crop.sum(dim=0)):  # horizontal lines (rows), then vertical
                sums, counts = _band_sums(lines, band_width)
                tight.append(counts - sums)
            if size_bounds is not None:
                area = float(crop.numel())
                total = crop.sum()
                size.append(torch.stack([size_bounds[0] * area - total, total - size_bounds[1] * area]))
        outside = (row * (~inside).to(row.dtype))[1:].sum(dim=(1, 2))
        empty_tensor = row.new_zeros((0,))
        out.append(
            {
                "empty": outside,
                "tight": torch.cat(tight) if tight else empty_tensor,
                "size": torch.cat(size) if size else empty_tensor,
            }
        )
    return out


class BoxConstraintLoss:
    """Constraint loss of box-only rows (Kervadec et al. 2020): emptiness + tightness (+ size).

    ``loss(probs, targets, epoch=e)`` returns the parts ``box_empty``, ``box_tight`` (and ``box_size``
    with ``size_bounds``), each ``sum psi_t(z) / (H W)`` averaged over the rows with
    ``t = min(t * t_growth ** e, t_max)``, and ``box = weight * (emptiness_weight * box_empty +
    tightness_weight * box_tight + size_weight * box_size)``.

    Args:
        band_width: lines per tightness band (paper: 5).
        size_bounds: ``(a, b)`` with ``0 <= a < b <= 1``: the foreground inside each box lies between
            ``a`` and ``b`` times the box area (paper: ``(0.5, 0.9)``); None = no size constraint.
        t: initial barrier parameter (paper: 5).
        t_growth: factor applied to ``t`` every epoch (paper: 1.1); 1 keeps it fixed.
        t_max: optional cap on ``t`` (None = the paper's unbounded growth). The emptiness constraint
            is never strictly feasible (``z >= 0``), so its gradient stays ``t`` per pixel and grows
            against the strong rows' Dice as ``t`` grows.
        weight: weight of the whole constraint loss (``box``) next to the strong rows' Dice.
        emptiness_weight, tightness_weight, size_weight: weights of the parts.

    Raises:
        ValueError: an invalid option (the message names it).
    """

    def __init__(
        self,
        *,
        band_width: int = 5,
        size_bounds: Sequence[float] | None = None,
        t: float = 5.0,
        t_growth: float = 1.1,
        t_max: float | None = None,
        weight: float = 1.0,
        emptiness_weight: float = 1.0,
        tightness_weight: float = 1.0,
        size_weight: float = 1.0,
    ):
        if isinstance(band_width, bool) or not isinstance(band_width, int) or band_width < 1:
            raise ValueError(f"band_width must be a positive integer, got {band_width!r}")
        if size_bounds is not None:
            try:
                low, high = (float(v) for v in size_bounds)
            except (TypeError, ValueError):
                raise ValueError(f"size_bounds must be None or (low, high), got {size_bounds!r}") from None
            if not 0 <= low < high <= 1:
                raise ValueError(f"size_bounds must satisfy 0 <= low < high <= 1, got {size_bounds!r}")
            size_bounds = (low, high)
        self.band_width = band_width
        self.size_bounds: tuple[float, float] | None = size_bounds  # type: ignore[assignment]
        self.t = _positive("t", t)
        t_growth_value = _positive("t_growth", t_growth)
        if t_growth_value < 1:
            raise ValueError(f"t_growth must be >= 1 (t grows towards a hard constraint), got {t_growth!r}")
        self.t_growth = t_growth_value
        self.t_max = None if t_max is None else _positive("t_max", t_max)
        if self.t_max is not None and self.t_max < self.t:
            raise ValueError(f"t_max must be >= t ({self.t}), got {t_max!r}")
        for name, value in (
            ("weight", weight),
            ("emptiness_weight", emptiness_weight),
            ("tightness_weight", tightness_weight),
            ("size_weight", size_weight),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        self.weight = float(weight)
        self.part_weights = {
            "box_empty": float(emptiness_weight),
            "box_tight": float(tightness_weight),
            "box_size": float(size_weight),
        }

    def t_at(self, epoch: int) -> float:
        """The barrier parameter of epoch ``epoch`` (0-based): ``t * t_growth ** epoch``, at most ``t_max``."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an integer >= 0, got {epoch!r}")
        t = self.t * self.t_growth**epoch
        return t if self.t_max is None else min(t, self.t_max)

    def __call__(self, probs: torch.Tensor, targets: Sequence[dict], *, epoch: int = 0) -> dict[str, torch.Tensor]:
        """Constraint loss of box-only rows.

        Args:
            probs: (B, C+1, H, W) softmax probabilities of the weak rows.
            targets: per row ``{"boxes": (G, 4) [x1, y1, x2, y2] patch pixels, "labels": (G,) in 1..C}``.
            epoch: the training epoch (sets ``t``).

        Returns:
            ``box_empty``, ``box_tight`` (``box_size`` with ``size_bounds``) and their weighted sum
            ``box``, scalars.
        """
        t = self.t_at(epoch)
        rows = constraint_values(probs, targets, band_width=self.band_width, size_bounds=self.size_bounds)
        scale = float(probs.shape[-2] * probs.shape[-1]) * max(len(rows), 1)
        keys = {"box_empty": "empty", "box_tight": "tight"}
        if self.size_bounds is not None:
            keys["box_size"] = "size"
        parts: dict[str, torch.Tensor] = {}
        for part, key in keys.items():
            z = [r[key] for r in rows if r[key].numel()]
            parts[part] = (
                log_barrier_extension(torch.cat(z), t).sum() / scale if z else probs.sum() * 0.0
            )  # through the graph even when empty
        parts["box"] = self.weight * sum(self.part_weights[k] * v for k, v in parts.items())
        return parts


__all__ = ["PARTS", "BoxConstraintLoss", "constraint_values", "log_barrier_extension"]
