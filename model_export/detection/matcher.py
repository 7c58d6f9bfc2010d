"""IoU matching of anchors to ground-truth boxes (RetinaNet rule)."""

from __future__ import annotations

import torch
from monai.data.box_utils import box_iou

#: Matcher result for an anchor below the negative threshold.
BACKGROUND = -1
#: Matcher result for an anchor between the thresholds (no classification loss).
IGNORE = -2


class Matcher:
    """Assign each anchor the index of a ground-truth box, ``BACKGROUND`` or ``IGNORE``.

    An anchor whose best IoU is >= ``positive_threshold`` is matched to that box; < ``negative_threshold``
    is background; in between is ignored. With ``allow_low_quality`` each box also claims the anchors of its
    highest IoU (so small boxes get at least one positive).

    Args:
        positive_threshold: IoU for a positive anchor (0.5 in RetinaNet).
        negative_threshold: IoU below which an anchor is background (0.4 in RetinaNet).
        allow_low_quality: also match each box's best anchors.
    """

    def __init__(
        self, positive_threshold: float = 0.5, negative_threshold: float = 0.4, *, allow_low_quality: bool = True
    ):
        if not 0.0 < positive_threshold <= 1.0:
            raise ValueError(f"positive_threshold must be in (0, 1], got {positive_threshold!r}")
        if not 0.0 <= negative_threshold <= positive_threshold:
            raise ValueError(f"negative_threshold must be in [0, positive_threshold], got {negative_threshold!r}")
        self.positive_threshold = positive_threshold
        self.negative_threshold = negative_threshold
        self.allow_low_quality = allow_low_quality

    def __call__(self, boxes: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
        """Match (G, 4) boxes to (N, 4) anchors -> (N,) int64 box index, ``BACKGROUND`` or ``IGNORE``."""
        n = anchors.shape[0]
        if boxes.numel() == 0:
            return torch.full((n,), BACKGROUND, dtype=torch.int64, device=anchors.device)
        iou = box_iou(boxes.float(), anchors.float())  # (G, N)
        best_iou, best_box = iou.max(dim=0)
        matches = best_box.clone()
        matches[best_iou < self.positive_threshold] = IGNORE
        matches[best_iou < self.negative_threshold] = BACKGROUND
        if self.allow_low_quality:
            best_per_box = iou.max(dim=1, keepdim=True).values
            g, a = torch.nonzero((iou == best_per_box) & (best_per_box > 0), as_tuple=True)
            matches[a] = best_box[a]
        return matches
