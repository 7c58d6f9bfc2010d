"""The one crop policy: where a model-sized window goes for a box, at image borders too.

Used by training sampling (target-centred patches), validation, evaluation (target region), int8
calibration patches and the service's box mode, so the model sees the same kind of input everywhere.

Policy, per axis (rows and columns independently), for a box ``[lo, hi)`` in continuous pixel
coordinates (pixel ``j`` spans ``[j, j + 1)``) and a window of ``window`` pixels on an image of
``size`` pixels:

1. The window is centred on the box (plus an optional ``offset``, the training jitter):
   ``origin = floor(centre + offset - window / 2 + 0.5)`` (halves round up).
2. It is then shifted the least so that it lies inside the image; when the image is smaller than
   the window it is shifted the least so that the image lies inside it (the only case with
   padding). Allowed origins: ``[min(0, size - window), max(0, size - window)]``.
3. When the box fits in the window, the window is also kept around the box (this only matters with
   an ``offset`` or a box reaching outside the image); keeping the box wins over staying inside the
   image.

The window size is the model's patch size; :func:`crop_window` with ``grow=True`` (serving, evaluation)
grows it to the box size rounded up to the size multiple when the box is larger, training keeps the
patch size (``grow=False``). Outside the image, windows are filled with the lowest value of the volume
(air in CT), see :meth:`Window.extract`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def round_up(value: float, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is >= ``value``."""
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1, got {multiple!r}")
    return int(math.ceil(value / multiple) * multiple)


def pad_to_multiple(array: np.ndarray, multiple: int, fill: float) -> tuple[np.ndarray, tuple[int, int]]:
    """Pad (..., H, W) at the bottom and right to multiples of ``multiple`` with ``fill`` (whole-slice mode).

    Returns:
        the padded array (``array`` itself when nothing is needed) and the original (H, W) for :func:`unpad`.
    """
    h, w = array.shape[-2:]
    ph, pw = round_up(h, multiple), round_up(w, multiple)
    if (ph, pw) == (h, w):
        return array, (h, w)
    pad = [(0, 0)] * (array.ndim - 2) + [(0, ph - h), (0, pw - w)]
    return np.pad(array, pad, constant_values=fill), (h, w)


def unpad(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Cut (..., H', W') back to the (H, W) that :func:`pad_to_multiple` returned."""
    return array[..., : shape[0], : shape[1]]


def window_origin(lo: float, hi: float, *, size: int, window: int, offset: float = 0.0) -> int:
    """First pixel of the window along one axis (module docstring: the policy).

    Args:
        lo, hi: the box ``[lo, hi)`` along this axis, pixels.
        size: image size along this axis.
        window: window size along this axis.
        offset: shift of the centre before the clamp (training jitter), pixels.
    """
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window!r}")
    first, last = min(0, size - window), max(0, size - window)
    box_first, box_last = math.ceil(hi) - window, math.floor(lo)
    if box_first <= box_last:  # the box fits: keep it inside the window
        a, b = max(first, box_first), min(last, box_last)
        first, last = (a, b) if a <= b else (box_first, box_last)
    origin = math.floor((lo + hi) / 2.0 + offset - window / 2.0 + 0.5)
    return min(max(origin, first), last)


@dataclass(frozen=True)
class Window:
    """A window of an image: top-left pixel (``y0``, ``x0``) and size; may reach outside the image."""

    y0: int
    x0: int
    height: int
    width: int

    @property
    def rows(self) -> slice:
        return slice(self.y0, self.y0 + self.height)

    @property
    def cols(self) -> slice:
        return slice(self.x0, self.x0 + self.width)

    def extract(self, array: np.ndarray, fill: float) -> np.ndarray:
        """The window of ``array`` (..., H, W) as (..., height, width); outside the image is ``fill``."""
        out = np.full((*array.shape[:-2], self.height, self.width), fill, dtype=array.dtype)
        h, w = array.shape[-2:]
        ys, ye = max(self.y0, 0), min(self.y0 + self.height, h)
        xs, xe = max(self.x0, 0), min(self.x0 + self.width, w)
        if ye > ys and xe > xs:
            out[..., ys - self.y0 : ye - self.y0, xs - self.x0 : xe - self.x0] = array[..., ys:ye, xs:xe]
        return out


def crop_window(
    box: Sequence[float],
    image_shape: Sequence[int],
    patch_size: Sequence[int],
    *,
    size_multiple: int = 1,
    grow: bool = True,
    offset: Sequence[float] = (0.0, 0.0),
) -> Window:
    """The window for ``box`` on an image (module docstring: the policy).

    Args:
        box: [x1, y1, x2, y2] pixels.
        image_shape: (H, W) of the image (or (..., H, W): the last two are used).
        patch_size: (h, w) of the model's patch.
        size_multiple: with ``grow``, a box larger than the patch gets a window of its size rounded up
            to this multiple.
        grow: grow the window to hold a larger box (serving, evaluation); False keeps the patch size.
        offset: (dx, dy) shift of the window centre before the clamp (training jitter), pixels.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    if not (x1 < x2 and y1 < y2):
        raise ValueError(f"box must have x1 < x2 and y1 < y2, got {list(box)}")
    height, width = (int(v) for v in image_shape[-2:])
    ph, pw = (int(v) for v in patch_size)
    if grow:
        ph = max(ph, round_up(math.ceil(y2 - y1), size_multiple))
        pw = max(pw, round_up(math.ceil(x2 - x1), size_multiple))
    dx, dy = (float(v) for v in offset)
    y0 = window_origin(y1, y2, size=height, window=ph, offset=dy)
    x0 = window_origin(x1, x2, size=width, window=pw, offset=dx)
    return Window(y0, x0, ph, pw)


__all__ = ["Window", "crop_window", "pad_to_multiple", "round_up", "unpad", "window_origin"]
