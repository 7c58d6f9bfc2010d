"""Variant MS-Net baseline (paper section 3, after Shah et al. [8]): one shared U-Net, two heads."""

from __future__ import annotations

from typing import Optional

import torch

from model_export.nets.base import SegmentationModel, make_detection_unit
from model_export.nets.config import NetConfig
from model_export.nets.heads import SegmentationUnit
from model_export.nets.unet import UNetBackbone, select


class VariantMSNet(SegmentationModel):
    """A single U-Net whose last decoder stage feeds the Segmentation Unit and whose decoder stages in
    ``config.detection_strides`` feed the Detection Unit (the multi-stream, shared-backbone design)."""

    def __init__(self, config: NetConfig):
        super().__init__()
        if config.name != "ms_net":
            raise ValueError(f"name must be 'ms_net' for VariantMSNet, got {config.name!r}")
        self.config = config
        self.backbone = UNetBackbone(config)
        self.seg_unit = SegmentationUnit(config.base_channels, config.num_classes)
        self.det_unit = make_detection_unit(config, self.backbone.decoder.widths)

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C+1, H, W) probabilities."""
        return self.seg_unit(self.backbone(x)[-1])

    def forward(self, x: torch.Tensor, seg_mask: Optional[torch.Tensor] = None) -> dict:
        """Shared U-Net on all rows; DU on all rows; SU on the rows picked by ``seg_mask``."""
        dec = self.backbone(x)
        out = self.run_detection(dec)
        last = select(dec[-1], seg_mask)
        out["segmentation"] = self.seg_unit(last) if last.shape[0] else None
        return out
