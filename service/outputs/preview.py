"""PNG preview of a segmentation: class-coloured mask contours over the CT, with a legend.

Layout (pixels, origin top-left)::

    +---------+---------+---------+
    | slice a | slice b | slice c |   tiles: the slices with the most foreground (z order), each
    +---------+---------+---------+   the CT in the window of the card's clip (else the 1st-99th
    | legend: class, volume, Dice |   percentiles), nearest-neighbour scaled by ``scale``
    +-----------------------------+

A contour pixel is a mask pixel of the class with a 4-neighbour outside the class (or outside the
image); it is painted in the class colour on every scaled pixel, so the picture is checkable pixel
by pixel against the mask (``PreviewLayout`` says where each tile lies). The montage is built as an
array and written as is (nothing resampled); the legend is drawn with matplotlib's Agg canvas (no
display, no pyplot). Torch-free.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from service.evaluation import class_summary

if TYPE_CHECKING:  # pragma: no cover
    from service.result import SegmentationResult

#: RGB of class value 1, 2, ... (matplotlib's tab10 without its grey), cycled past the end.
CLASS_COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (31, 119, 180),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (188, 189, 34),
    (23, 190, 207),
)
LEGEND_PX_PER_LINE = 18
DPI = 100


@dataclass(frozen=True)
class Tile:
    """One montage tile: slice ``z`` drawn at (``x0``, ``y0``) (top-left, pixels) scaled by ``scale``."""

    z: int
    x0: int
    y0: int
    scale: int


@dataclass(frozen=True)
class PreviewLayout:
    """Where the tiles are in the PNG (``width`` x ``height`` pixels)."""

    tiles: tuple[Tile, ...]
    width: int
    height: int


def class_colour(value: int) -> tuple[int, int, int]:
    """RGB of class ``value`` (1..C)."""
    if value < 1:
        raise ValueError(f"value must be >= 1, got {value}")
    return CLASS_COLOURS[(value - 1) % len(CLASS_COLOURS)]


def contour(mask: np.ndarray) -> np.ndarray:
    """Pixels of a 2-D boolean ``mask`` (H, W) with a 4-neighbour outside it (image edges count as outside)."""
    mask = np.asarray(mask, dtype=bool)
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def pick_slices(labels: np.ndarray, count: int) -> list[int]:
    """The ``count`` slices of (Z, Y, X) ``labels`` with the most foreground, in z order; evenly spaced slices
    when there is no foreground."""
    if count < 1:
        raise ValueError(f"count must be >= 1, got {count}")
    depth = labels.shape[0]
    per_slice = (labels > 0).reshape(depth, -1).sum(axis=1)
    if not per_slice.any():
        return sorted({int(round(v)) for v in np.linspace(0, depth - 1, min(count, depth))})
    ranked = sorted(np.flatnonzero(per_slice), key=lambda z: (-per_slice[z], z))[:count]
    return sorted(int(z) for z in ranked)


def window(image: np.ndarray, clip: Optional[Sequence[float]]) -> tuple[float, float]:
    """Display window: the card's clip, else the 1st and 99th percentiles of the image."""
    if clip is not None:
        return float(clip[0]), float(clip[1])
    low, high = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    return float(low), float(max(high, low + 1e-3))


def draw_tile(image2d: np.ndarray, labels2d: np.ndarray, *, lo: float, hi: float, num_classes: int) -> np.ndarray:
    """(H, W, 3) uint8: the slice in grey (window ``lo``..``hi``) with each class's contour in its colour."""
    grey = np.clip((image2d.astype(np.float32) - lo) / (hi - lo), 0, 1)
    rgb = np.repeat((grey * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    for value in range(1, num_classes + 1):
        rgb[contour(labels2d == value)] = class_colour(value)
    return rgb


def legend_lines(result: "SegmentationResult") -> list[str]:
    """One line per class: name, volume (mL, voxels), Dice when the result has metrics."""
    names = [c.name for c in result.card.classes]
    dice = {c["value"]: c["dice"] for c in result.metrics["classes"]} if result.metrics else {}
    lines = []
    for row in class_summary(result.labels, spacing=result.image.spacing, class_names=names):
        text = f"{row['value']} {row['name']}: {row['volume_ml']:.2f} mL ({row['voxels']} voxels)"
        if row["value"] in dice and dice[row["value"]] is not None:
            text += f", Dice {dice[row['value']]:.3f}"
        lines.append(text)
    return lines


def render_preview(
    result: "SegmentationResult", *, max_slices: int = 6, columns: int = 3, tile_px: int = 256
) -> tuple[bytes, PreviewLayout]:
    """The preview PNG of ``result`` and its layout.

    Args:
        result: the pipeline result (CT in ``result.image``, labels (Z, Y, X)).
        max_slices: most slices in the montage.
        columns: tiles per row.
        tile_px: a tile is scaled by the largest integer keeping it within this many pixels (at least 1).
    """
    if columns < 1:
        raise ValueError(f"columns must be >= 1, got {columns}")
    if tile_px < 1:
        raise ValueError(f"tile_px must be >= 1, got {tile_px}")
    image = result.image.array
    labels = result.labels
    num_classes = result.card.num_classes
    lo, hi = window(image, result.card.input.clip)
    slices = pick_slices(labels, max_slices)
    h, w = labels.shape[1:]
    scale = max(1, tile_px // max(h, w))
    th, tw = h * scale, w * scale
    cols = min(columns, len(slices))
    rows = -(-len(slices) // cols)
    lines = [f"slices {', '.join(map(str, slices))} of {labels.shape[0]}; window {lo:g}..{hi:g}"]
    lines += legend_lines(result)
    legend_h = LEGEND_PX_PER_LINE * (len(lines) + 1)
    width, height = cols * tw, rows * th + legend_h
    montage = np.zeros((rows * th, cols * tw, 3), dtype=np.uint8)
    tiles = []
    for i, z in enumerate(slices):
        r, c = divmod(i, cols)
        tile = draw_tile(image[z], labels[z], lo=lo, hi=hi, num_classes=num_classes)
        tile = np.repeat(np.repeat(tile, scale, axis=0), scale, axis=1)
        montage[r * th : (r + 1) * th, c * tw : (c + 1) * tw] = tile
        tiles.append(Tile(z=z, x0=c * tw, y0=r * th, scale=scale))

    picture = np.concatenate([montage, _legend(lines, width, legend_h)], axis=0)
    buf = io.BytesIO()
    from matplotlib.image import imsave

    imsave(buf, picture, format="png")
    return buf.getvalue(), PreviewLayout(tiles=tuple(tiles), width=width, height=height)


def _legend(lines: list[str], width: int, height: int) -> np.ndarray:
    """(height, width, 3) uint8: the legend text on black (matplotlib Agg)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="black")
    canvas = FigureCanvasAgg(fig)
    for i, text in enumerate(lines):
        colour = "white" if i == 0 else tuple(v / 255 for v in class_colour(i))
        fig.text(4 / width, 1 - LEGEND_PX_PER_LINE * (i + 1) / height, text, color=colour, fontsize=9, va="bottom")
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())[:height, :width, :3]
    out = np.zeros((height, width, 3), dtype=np.uint8)
    out[: rgba.shape[0], : rgba.shape[1]] = rgba
    return out


def preview_png(result: "SegmentationResult", **options) -> bytes:
    """The preview PNG of ``result`` (see :func:`render_preview`)."""
    return render_preview(result, **options)[0]
