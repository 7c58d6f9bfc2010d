"""Behaviour shared by every model of the family: loss assembly and the detection outputs."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from model_export.nets.config import DECODER_STRIDES, NetConfig
from model_export.nets.heads import DetectionUnit


def make_detection_unit(config: NetConfig, decoder_widths: Sequence[int]) -> DetectionUnit:
    """The DU fed by the decoder levels named in ``config.detection_strides``."""
    return DetectionUnit(
        [decoder_widths[DECODER_STRIDES.index(s)] for s in config.detection_strides],
        config.detection_strides,
        config.num_classes,
        head_channels=config.head_channels,
        head_convs=config.head_convs,
        anchor_size_factor=config.anchor_size_factor,
        anchor_scales=config.anchor_scales,
        anchor_ratios=config.anchor_ratios,
        anchor_shapes=config.anchor_shapes,
    )


class SegmentationModel(nn.Module):
    """Base class: subclasses set ``config``, ``seg_unit``, optionally ``det_unit``, and implement
    ``segment(x)`` and ``forward(x, seg_mask)``.

    ``forward`` returns a dict with ``segmentation`` ((B_s, C+1, H, W) probabilities for the rows picked
    by the boolean (B,) ``seg_mask``, all rows when it is None, None when no row is picked) and, for models
    with a detection unit, ``cls_logits``, ``box_deltas`` (per level, see ``DetectionUnit.forward``) and
    ``det_sizes`` (the (H_l, W_l) of each level).
    """

    config: NetConfig

    @property
    def has_detection(self) -> bool:
        """True when the model has a Detection Unit (trains on box-only images)."""
        return getattr(self, "det_unit", None) is not None

    def run_detection(self, decoder_feats: Sequence[torch.Tensor]) -> dict:
        """Run the DU on the configured decoder levels (decoder features deepest first)."""
        assert self.det_unit is not None
        levels = [decoder_feats[DECODER_STRIDES.index(s)] for s in self.config.detection_strides]
        cls_logits, box_deltas = self.det_unit(levels)
        return {
            "cls_logits": cls_logits,
            "box_deltas": box_deltas,
            "det_sizes": [tuple(f.shape[-2:]) for f in levels],
        }

    def loss(
        self,
        out: dict,
        *,
        labels: Optional[torch.Tensor] = None,
        targets: Optional[Sequence[dict]] = None,
        det_rows: Optional[Sequence[bool]] = None,
        det_weight: float = 1.0,
        dice_foreground_only: bool = False,
        seg_ce_weight: float = 0.0,
    ) -> dict[str, torch.Tensor]:
        """Sum of the heads' losses for one ``forward`` output.

        Args:
            out: ``forward`` output.
            labels: (B_s, H, W) integer masks of the segmented rows (needed when ``out`` has a segmentation).
            targets: per row of the whole batch ``{"boxes", "labels"}`` (used when the model detects).
            det_rows: per row, whether its detection loss counts (None: every row). The paper gives
                strong rows only the segmentation loss: pass the weak-row flags for that.
            det_weight: weight of the detection parts in ``total``.
            dice_foreground_only: Dice over the foreground classes, batch-pooled (``soft_dice_loss``).
            seg_ce_weight: weight of a pixel-wise cross-entropy added to the Dice (0: Dice only, as
                the paper; nnU-Net trains on Dice + CE).

        Returns:
            The parts (``seg_dice``, ``det_cls``, ``det_box`` as they apply, unweighted) and
            ``total = seg_dice + seg_ce_weight * seg_ce + det_weight * (det_cls + det_box)`` (``seg_ce``
            only when its weight is positive).
        """
        parts: dict[str, torch.Tensor] = {}
        total = None
        if out.get("segmentation") is not None:
            if labels is None:
                raise ValueError("labels are required for a batch with segmented rows")
            parts["seg_dice"] = self.seg_unit.loss(out["segmentation"], labels, foreground_only=dice_foreground_only)
            total = parts["seg_dice"]
            if seg_ce_weight > 0:
                parts["seg_ce"] = self.seg_unit.ce_loss(out["segmentation"], labels)
                total = total + float(seg_ce_weight) * parts["seg_ce"]
        use_det = det_rows is None or any(bool(r) for r in det_rows)
        if self.has_detection and out.get("cls_logits") is not None and targets is not None and use_det:
            det = self.det_unit.loss(out["cls_logits"], out["box_deltas"], targets, out["det_sizes"], rows=det_rows)
            parts.update(det)
            weighted = float(det_weight) * (det["det_cls"] + det["det_box"])
            total = weighted if total is None else total + weighted
        if total is None:
            raise ValueError("nothing to compute a loss from: no segmentation output and no detection targets")
        parts["total"] = total
        return parts

    def segmentation_path(self) -> nn.Module:
        """The export/serving graph: (B, C_in, H, W) -> (B, C+1, H, W) probabilities, sharing parameters."""
        return SegmentationPath(self)


class SegmentationPath(nn.Module):
    """Wraps a model of the family so that ``forward(x)`` returns only the segmentation probabilities.

    Shares (does not copy) the wrapped model's parameters; this is what gets exported and served.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C+1, H, W) class probabilities (softmax over channels)."""
        return self.model.segment(x)
