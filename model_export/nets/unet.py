"""U-Net encoder/decoder with the paper's 9 dilated stages, and the U-Net baselines."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from model_export.nets.base import SegmentationModel
from model_export.nets.blocks import ConvStage, UnarySSE
from model_export.nets.config import NetConfig
from model_export.nets.heads import SegmentationUnit

Recalibrate = Callable[[int, torch.Tensor], torch.Tensor]


class UNetEncoder(nn.Module):
    """4 encoder stages and the bottleneck, max-pooling between them.

    Args:
        in_channels: image channels.
        widths: channels of the 5 levels.
        dilations: dilation of the 5 stages.
        dropout: stage-output dropout rate.
        unary_sse: add a unary sSE module after every stage.
    """

    def __init__(
        self,
        in_channels: int,
        widths: tuple[int, ...],
        dilations: tuple[int, ...],
        *,
        dropout: float = 0.0,
        unary_sse: bool = False,
    ):
        super().__init__()
        if len(widths) != 5 or len(dilations) != 5:
            raise ValueError(f"widths and dilations must have 5 entries, got {widths!r}, {dilations!r}")
        ins = (in_channels,) + tuple(widths[:-1])
        self.stages = nn.ModuleList(
            ConvStage(i, o, dilation=d, dropout=dropout) for i, o, d in zip(ins, widths, dilations, strict=True)
        )
        self.sse = nn.ModuleList(UnarySSE(w) for w in widths) if unary_sse else None
        self.pool = nn.MaxPool2d(2)
        self.widths = tuple(widths)

    def forward(self, x: torch.Tensor, recalibrate: Optional[Recalibrate] = None) -> list[torch.Tensor]:
        """Encode ``x`` (B, C_in, H, W).

        Args:
            x: input batch; H and W multiples of 16.
            recalibrate: optional ``f(stage_index, feature) -> feature`` applied to each stage output
                before it is pooled and skip-connected (MSDN's binary sSE links).

        Returns:
            5 features, level ``i`` of shape (B, widths[i], H / 2**i, W / 2**i).
        """
        feats = []
        h = x
        for i, stage in enumerate(self.stages):
            if i > 0:
                h = self.pool(h)
            h = stage(h)
            if self.sse is not None:
                h = self.sse[i](h)
            if recalibrate is not None:
                h = recalibrate(i, h)
            feats.append(h)
        return feats


class UNetDecoder(nn.Module):
    """4 decoder stages: 2x bilinear upsampling, skip concatenation, conv stage.

    Args:
        widths: channels of the 5 encoder levels.
        dilations: dilation of the 4 decoder stages, deepest first.
        dropout: stage-output dropout rate.
        unary_sse: add a unary sSE module after every stage.
    """

    def __init__(
        self, widths: tuple[int, ...], dilations: tuple[int, ...], *, dropout: float = 0.0, unary_sse: bool = False
    ):
        super().__init__()
        if len(widths) != 5 or len(dilations) != 4:
            raise ValueError(f"widths must have 5 and dilations 4 entries, got {widths!r}, {dilations!r}")
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
        outs = tuple(reversed(widths[:-1]))  # 8b, 4b, 2b, b
        ins = tuple(reversed(widths[1:]))  # 16b, 8b, 4b, 2b
        self.stages = nn.ModuleList(
            ConvStage(i + o, o, dilation=d, dropout=dropout) for i, o, d in zip(ins, outs, dilations, strict=True)
        )
        self.sse = nn.ModuleList(UnarySSE(w) for w in outs) if unary_sse else None
        self.widths = outs

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """Decode the 5 encoder features.

        Returns:
            4 features, deepest first: (B, 8b, H/8, W/8), (B, 4b, H/4, W/4), (B, 2b, H/2, W/2), (B, b, H, W).
        """
        h = feats[-1]
        out = []
        for i, stage in enumerate(self.stages):
            skip = feats[-2 - i]
            h = stage(torch.cat([self.up(h), skip], dim=1))
            if self.sse is not None:
                h = self.sse[i](h)
            out.append(h)
        return out


class UNetBackbone(nn.Module):
    """Encoder + decoder of one U-Net, built from a ``NetConfig``."""

    def __init__(self, config: NetConfig, *, unary_sse: bool = False):
        super().__init__()
        d = config.dilations
        self.encoder = UNetEncoder(
            config.in_channels, config.widths, d[:5], dropout=config.dropout, unary_sse=unary_sse
        )
        self.decoder = UNetDecoder(config.widths, d[5:], dropout=config.dropout, unary_sse=unary_sse)

    def forward(self, x: torch.Tensor, recalibrate: Optional[Recalibrate] = None) -> list[torch.Tensor]:
        """(B, C_in, H, W) -> 4 decoder features, deepest first (see ``UNetDecoder``)."""
        return self.decoder(self.encoder(x, recalibrate))


def select(x: torch.Tensor, seg_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """Rows of ``x`` selected by the boolean (B,) ``seg_mask``; all rows when it is None."""
    return x if seg_mask is None else x[seg_mask]


class UNet(SegmentationModel):
    """Segmentation-only U-Net baseline (same conv layers as MSDN's segmentation sub-network).

    With ``config.name == "unet_sse"`` a unary sSE module follows every stage.
    """

    def __init__(self, config: NetConfig):
        super().__init__()
        if config.name not in ("unet", "unet_sse"):
            raise ValueError(f"name must be 'unet' or 'unet_sse' for UNet, got {config.name!r}")
        self.config = config
        self.backbone = UNetBackbone(config, unary_sse=config.name == "unet_sse")
        self.seg_unit = SegmentationUnit(config.base_channels, config.num_classes)
        self.det_unit = None

    def segment(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C+1, H, W) class probabilities."""
        return self.seg_unit(self.backbone(x)[-1])

    def forward(self, x: torch.Tensor, seg_mask: Optional[torch.Tensor] = None) -> dict:
        """(B, C_in, H, W) -> ``{"segmentation": (B_s, C+1, H, W)}``, B_s rows chosen by the (B,) seg_mask.

        ``segmentation`` is None when no row is selected.
        """
        x = select(x, seg_mask)
        return {"segmentation": self.segment(x) if x.shape[0] else None}
