"""Building blocks of the U-Nets: the dilated conv stage and the sSE modules (paper section 2)."""

from __future__ import annotations

import torch
from torch import nn


def check_positive_int(name: str, value: int) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a positive int."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def check_rate(name: str, value: float) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``0 <= value < 1``."""
    if not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


class ConvStage(nn.Sequential):
    """One feature stage: 2 x (3x3 dilated conv + BatchNorm + ReLU), then dropout.

    Padding equals the dilation so the spatial size is kept.

    Args:
        in_channels: input channels.
        out_channels: output channels of both convolutions.
        dilation: dilation factor of both convolutions.
        dropout: rate of the channel dropout applied to the stage output.
    """

    def __init__(self, in_channels: int, out_channels: int, *, dilation: int = 1, dropout: float = 0.0):
        check_positive_int("in_channels", in_channels)
        check_positive_int("out_channels", out_channels)
        check_positive_int("dilation", dilation)
        check_rate("dropout", dropout)
        layers: list[nn.Module] = []
        for c_in in (in_channels, out_channels):
            layers += [
                nn.Conv2d(c_in, out_channels, 3, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Dropout2d(dropout) if dropout > 0 else nn.Identity())
        super().__init__(*layers)
        self.dilation = dilation


class UnarySSE(nn.Module):
    """Channel squeeze and spatial excitation on one feature map (paper eq. 1).

    ``U_hat = sigmoid(w_sq * U) o U`` with ``w_sq`` a 1x1 convolution to one channel, no bias.

    Args:
        channels: channels of the feature map.
    """

    def __init__(self, channels: int):
        super().__init__()
        check_positive_int("channels", channels)
        self.squeeze = nn.Conv2d(channels, 1, kernel_size=1, bias=False)

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """Recalibrate ``u`` (B, C, H, W) -> (B, C, H, W)."""
        return u * torch.sigmoid(self.squeeze(u))


class BinarySSE(nn.Module):
    """Binary sSE (paper eq. 2): squeeze ``u2``, recalibrate ``u1`` with it.

    ``U1_hat = sigmoid(w_sq * U2) o U1``. In MSDN ``u1`` is the segmentation feature and ``u2``
    the detection feature of the same stage.

    Args:
        squeeze_channels: channels of the squeezed map ``u2``.
    """

    def __init__(self, squeeze_channels: int):
        super().__init__()
        check_positive_int("squeeze_channels", squeeze_channels)
        self.squeeze = nn.Conv2d(squeeze_channels, 1, kernel_size=1, bias=False)

    def forward(self, u1: torch.Tensor, u2: torch.Tensor) -> torch.Tensor:
        """Recalibrate ``u1`` (B, C1, H, W) by ``u2`` (B, C2, H, W) -> (B, C1, H, W)."""
        return u1 * torch.sigmoid(self.squeeze(u2))
