"""MSDN: segmentation and detection U-Nets linked by binary sSE modules (paper 2.2), and MSDN-."""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from model_export.nets.base import SegmentationModel, make_detection_unit
from model_export.nets.blocks import BinarySSE
from model_export.nets.config import NetConfig
from model_export.nets.heads import SegmentationUnit
from model_export.nets.unet import UNetBackbone, UNetDecoder, UNetEncoder, select


class MSDN(SegmentationModel):
    """Mixed-Supervised Dual-Network.

    A segmentation U-Net (``seg_net``) and a detection U-Net (``det_encoder`` + ``det_decoder``) with the
    same stages. After each of the 4 encoder stages and the bottleneck of the segmentation net a binary
    sSE module (``links[i]``) squeezes the detection feature of the same stage and recalibrates the
    segmentation feature (5 links). The Segmentation Unit reads the last segmentation decoder stage; the
    Detection Unit, shared across levels, reads the detection decoder stages in
    ``config.detection_strides``.

    ``config.name == "msdn_minus"`` builds MSDN- (paper section 3): no Detection Unit. Its detection
    net then only feeds the links, so only the detection encoder and bottleneck are built (a detection
    decoder would receive no gradient).
    """

    def __init__(self, config: NetConfig):
        super().__init__()
        if config.name not in ("msdn", "msdn_minus"):
            raise ValueError(f"name must be 'msdn' or 'msdn_minus' for MSDN, got {config.name!r}")
        self.config = config
        d = config.dilations
        self.seg_net = UNetBackbone(config)
        self.det_encoder = UNetEncoder(config.in_channels, config.widths, d[:5], dropout=config.dropout)
        self.links = nn.ModuleList(BinarySSE(w) for w in config.widths)
        self.seg_unit = SegmentationUnit(config.base_channels, config.num_classes)
        if config.name == "msdn":
            self.det_decoder: Optional[UNetDecoder] = UNetDecoder(config.widths, d[5:], dropout=config.dropout)
            self.det_unit = make_detection_unit(config, self.det_decoder.widths)
        else:
            self.det_decoder = None
            self.det_unit = None

    def _segment(self, x: torch.Tensor, det_feats: list[torch.Tensor]) -> torch.Tensor:
        detach = self.config.detach_gates

        def recalibrate(i: int, h: torch.Tensor) -> torch.Tensor:
            g = det_feats[i]
            return self.links[i](h, g.detach() if detach else g)

        return self.seg_unit(self.seg_net(x, recalibrate)[-1])

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """Segmentation path: detection encoder + bottleneck, links, segmentation net, SU.

        (B, C_in, H, W) -> (B, C+1, H, W) probabilities.
        """
        return self._segment(x, self.det_encoder(x))

    def forward(self, x: torch.Tensor, seg_mask: Optional[torch.Tensor] = None) -> dict:
        """Run the detection net on all rows of (B, C_in, H, W) and the segmentation net on the rows picked
        by ``seg_mask`` (all when None); box-only rows never touch segmentation-only parameters.

        See ``SegmentationModel`` for the returned dict.
        """
        det_feats = self.det_encoder(x)
        out: dict = {}
        if self.det_decoder is not None:
            out.update(self.run_detection(self.det_decoder(det_feats)))
        xs = select(x, seg_mask)
        out["segmentation"] = self._segment(xs, [select(f, seg_mask) for f in det_feats]) if xs.shape[0] else None
        return out
