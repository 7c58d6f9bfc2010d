"""Output units: the Segmentation Unit (SU) and the RetinaNet-style Detection Unit (DU)."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import nn

from model_export.detection.anchors import cell_anchors, shape_anchors, shifted_anchors
from model_export.detection.box_coder import BoxCoder
from model_export.detection.matcher import BACKGROUND, IGNORE, Matcher
from model_export.losses import box_regression_loss, cross_entropy_from_probs, sigmoid_focal_loss, soft_dice_loss
from model_export.nets.blocks import check_positive_int


class SegmentationUnit(nn.Module):
    """1x1 convolution to C + 1 channels followed by a channel softmax (paper 2.2).

    Args:
        in_channels: channels of the last decoder feature.
        num_classes: foreground classes C.
    """

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        check_positive_int("in_channels", in_channels)
        check_positive_int("num_classes", num_classes)
        self.conv = nn.Conv2d(in_channels, num_classes + 1, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_f, H, W) -> (B, C+1, H, W) probabilities."""
        return torch.softmax(self.conv(x), dim=1)

    @staticmethod
    def loss(probs: torch.Tensor, labels: torch.Tensor, *, foreground_only: bool = False) -> torch.Tensor:
        """Soft Dice loss of (B, C+1, H, W) probabilities against (B, H, W) labels in 0..C."""
        return soft_dice_loss(probs, labels, foreground_only=foreground_only)

    @staticmethod
    def ce_loss(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Pixel-wise cross-entropy of (B, C+1, H, W) probabilities against (B, H, W) labels in 0..C."""
        return cross_entropy_from_probs(probs, labels)


def _tower(in_channels: int, channels: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class DetectionUnit(nn.Module):
    """Single-stage detection unit shared across decoder levels (paper 2.2, RetinaNet head).

    Each selected decoder level is first projected to ``head_channels`` by its own 1x1 lateral
    convolution (levels differ in width; the towers are shared and need one input width). Then a
    classifier tower (``head_convs`` x (3x3 conv, ReLU), 3x3 conv to C*A, sigmoid at inference) and a
    regressor tower (same, to 4*A box deltas) run on every level with the same parameters.

    Args:
        in_channels: channels of each input level, in the order they are passed.
        strides: stride of each input level (pixels per feature cell).
        num_classes: foreground classes C.
        head_channels: tower width (256 in the paper).
        head_convs: 3x3 convs per tower before the output conv (4 in the paper).
        anchor_size_factor: anchor base size of a level = factor x stride.
        anchor_scales: size multipliers; anchor_ratios: height/width ratios. A = scales x ratios.
        anchor_shapes: explicit (w, h) anchors per level (overrides the three above); A = their count.
        prior: initial foreground probability of the classifier (RetinaNet's pi = 0.01).
    """

    def __init__(
        self,
        in_channels: Sequence[int],
        strides: Sequence[int],
        num_classes: int,
        *,
        head_channels: int = 256,
        head_convs: int = 4,
        anchor_size_factor: float = 4.0,
        anchor_scales: Sequence[float] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        anchor_ratios: Sequence[float] = (0.5, 1.0, 2.0),
        anchor_shapes: Optional[Sequence[Sequence[Sequence[float]]]] = None,
        prior: float = 0.01,
    ):
        super().__init__()
        if len(in_channels) != len(strides) or not strides:
            raise ValueError(
                f"in_channels and strides must be non-empty and equally long, got {in_channels}, {strides}"
            )
        check_positive_int("num_classes", num_classes)
        check_positive_int("head_channels", head_channels)
        check_positive_int("head_convs", head_convs)
        if not 0 < prior < 1:
            raise ValueError(f"prior must be in (0, 1), got {prior!r}")
        self.num_classes = num_classes
        self.strides = tuple(strides)
        self.anchor_size_factor = float(anchor_size_factor)
        self.anchor_scales = tuple(anchor_scales)
        self.anchor_ratios = tuple(anchor_ratios)
        if anchor_shapes is not None:
            if len(anchor_shapes) != len(strides) or len({len(level) for level in anchor_shapes}) != 1:
                raise ValueError(f"anchor_shapes must hold one equally long list per level, got {anchor_shapes!r}")
            self.anchor_shapes = tuple(tuple(tuple(float(v) for v in a) for a in level) for level in anchor_shapes)
            self.level_cells = [shape_anchors(level) for level in self.anchor_shapes]
        else:
            self.anchor_shapes = None
            self.level_cells = [
                cell_anchors(self.anchor_size_factor * s, self.anchor_scales, self.anchor_ratios) for s in strides
            ]
        self.num_anchors = self.level_cells[0].shape[0]
        a = self.num_anchors
        self.lateral = nn.ModuleList(nn.Conv2d(c, head_channels, 1) for c in in_channels)
        self.cls_tower = _tower(head_channels, head_channels, head_convs)
        self.box_tower = _tower(head_channels, head_channels, head_convs)
        self.cls_out = nn.Conv2d(head_channels, num_classes * a, 3, padding=1)
        self.box_out = nn.Conv2d(head_channels, 4 * a, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.zeros_(m.bias)
        nn.init.constant_(self.cls_out.bias, -math.log((1 - prior) / prior))
        self.box_coder = BoxCoder()
        self.matcher = Matcher()

    def forward(self, feats: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Run the shared towers on every level.

        Args:
            feats: level features (B, C_l, H_l, W_l), in the order of ``strides``.

        Returns:
            ``(cls_logits, box_deltas)``: per level (B, H_l * W_l * A, C) logits and (B, H_l * W_l * A, 4)
            deltas, rows ordered like ``grid_anchors``.
        """
        cls_out, box_out = [], []
        for lateral, f in zip(self.lateral, feats, strict=True):
            h = lateral(f)
            cls_out.append(self._flatten(self.cls_out(self.cls_tower(h)), self.num_classes))
            box_out.append(self._flatten(self.box_out(self.box_tower(h)), 4))
        return cls_out, box_out

    def _flatten(self, x: torch.Tensor, k: int) -> torch.Tensor:
        b, _, h, w = x.shape
        return x.view(b, self.num_anchors, k, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, k)

    def anchors(self, sizes: Sequence[tuple[int, int]], device: Optional[torch.device] = None) -> torch.Tensor:
        """All anchors for levels of the given (H_l, W_l), concatenated -> (N, 4)."""
        return torch.cat(
            [
                shifted_anchors(h, w, s, base, device=device)
                for (h, w), s, base in zip(sizes, self.strides, self.level_cells, strict=True)
            ]
        )

    def loss(
        self,
        cls_logits: Sequence[torch.Tensor],
        box_deltas: Sequence[torch.Tensor],
        targets: Sequence[dict],
        sizes: Sequence[tuple[int, int]],
        rows: Optional[Sequence[bool]] = None,
    ) -> dict[str, torch.Tensor]:
        """Focal classification loss and smooth-L1 box loss, both normalised by the number of positives.

        Args:
            cls_logits, box_deltas: ``forward`` outputs.
            targets: per image ``{"boxes": (G, 4) [x1, y1, x2, y2] pixels, "labels": (G,) ints in 1..C}``.
            sizes: (H_l, W_l) of each level (to build the anchors).
            rows: per image, whether it contributes (None: all); e.g. only the weak rows (paper 2.2).

        Returns:
            ``{"det_cls": scalar, "det_box": scalar}``.
        """
        logits = torch.cat(list(cls_logits), dim=1)
        deltas = torch.cat(list(box_deltas), dim=1)
        anchors = self.anchors(sizes, device=logits.device)
        cls_total = logits.new_zeros(())
        box_total = logits.new_zeros(())
        num_pos = 0
        for i, t in enumerate(targets):
            if rows is not None and not bool(rows[i]):
                continue
            boxes = t["boxes"].to(logits.device, torch.float32).reshape(-1, 4)
            labels = t["labels"].to(logits.device, torch.int64).reshape(-1)
            matches = self.matcher(boxes, anchors)
            pos = matches >= 0
            valid = matches != IGNORE
            cls_target = torch.zeros_like(logits[i])
            if pos.any():
                cls_target[pos, labels[matches[pos]] - 1] = 1.0
                box_target = self.box_coder.encode(boxes[matches[pos]], anchors[pos])
                box_total = box_total + box_regression_loss(deltas[i][pos], box_target)
            cls_total = cls_total + sigmoid_focal_loss(logits[i][valid], cls_target[valid])
            num_pos += int(pos.sum())
        norm = max(num_pos, 1)
        return {"det_cls": cls_total / norm, "det_box": box_total / norm}

    def detect(
        self, cls_logits: Sequence[torch.Tensor], box_deltas: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Decode outputs to scores (B, N, C) in [0, 1] and boxes (B, N, 4) in pixels (no NMS)."""
        logits = torch.cat(list(cls_logits), dim=1)
        deltas = torch.cat(list(box_deltas), dim=1)
        anchors = self.anchors(sizes, device=logits.device)
        b, n, _ = deltas.shape
        boxes = self.box_coder.decode(deltas.reshape(-1, 4), anchors.repeat(b, 1)).reshape(b, n, 4)
        return torch.sigmoid(logits), boxes


__all__ = ["SegmentationUnit", "DetectionUnit", "BACKGROUND", "IGNORE"]
