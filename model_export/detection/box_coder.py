"""Box coding between anchors and boxes (RetinaNet deltas), on top of MONAI's ``BoxCoder``."""

from __future__ import annotations

import math

import torch
from monai.apps.detection.utils.box_coder import BoxCoder as _MonaiBoxCoder

#: Largest log-size delta decoded (as torchvision/MONAI): exp(4.135) ~ 62.5x the anchor size.
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


class BoxCoder:
    """Encode boxes as ``(dx, dy, dw, dh)`` offsets from anchors and decode them back.

    ``dx = wx * (gx - ax) / aw``, ``dw = ww * log(gw / aw)`` (same for y/h), boxes ``[x1, y1, x2, y2]``.

    Args:
        weights: ``(wx, wy, ww, wh)``.
    """

    def __init__(self, weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)):
        if len(weights) != 4 or any(w <= 0 for w in weights):
            raise ValueError(f"weights must be 4 positive numbers, got {weights!r}")
        self.weights = tuple(float(w) for w in weights)
        self._coder = _MonaiBoxCoder(weights=self.weights, boxes_xform_clip=BBOX_XFORM_CLIP)

    def encode(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """(N, 4) target boxes relative to (N, 4) anchors -> (N, 4) deltas."""
        return self._coder.encode_single(boxes, anchors)

    def decode(self, deltas: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """(N, 4) deltas applied to (N, 4) anchors -> (N, 4) boxes ``[x1, y1, x2, y2]``."""
        return self._coder.decode_single(deltas, anchors)
