"""The model family: MSDN and the paper's baselines.

>>> from model_export.nets import build_model
>>> model = build_model("msdn", preset="small", num_classes=1)
"""

from __future__ import annotations

from typing import Any

from model_export.nets.base import SegmentationModel
from model_export.nets.config import MODEL_NAMES, PRESETS, SIZE_MULTIPLE, NetConfig, make_config
from model_export.nets.ms_net import VariantMSNet
from model_export.nets.msdn import MSDN
from model_export.nets.unet import UNet

_CLASSES = {"unet": UNet, "unet_sse": UNet, "ms_net": VariantMSNet, "msdn_minus": MSDN, "msdn": MSDN}


def build_from_config(config: NetConfig) -> SegmentationModel:
    """Instantiate the network described by ``config``."""
    return _CLASSES[config.name](config)


def build_model(
    name: str, *, preset: str = "paper", in_channels: int = 1, num_classes: int = 1, **overrides: Any
) -> SegmentationModel:
    """Build a model of the family.

    Args:
        name: ``unet``, ``unet_sse``, ``ms_net``, ``msdn_minus`` or ``msdn``.
        preset: ``paper`` (faithful) or ``small`` (CPU-sized); see ``PRESETS``.
        in_channels: image channels.
        num_classes: foreground classes C.
        **overrides: any other ``NetConfig`` field (``base_channels``, ``dropout``, ``head_channels``,
            ``detection_strides``, ...).

    Raises:
        ValueError: unknown name, preset or option, or an invalid value (the message names it).
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"name must be one of {MODEL_NAMES}, got {name!r}")
    config = make_config(name, preset=preset, in_channels=in_channels, num_classes=num_classes, **overrides)
    return build_from_config(config)


__all__ = [
    "MODEL_NAMES",
    "PRESETS",
    "SIZE_MULTIPLE",
    "NetConfig",
    "SegmentationModel",
    "build_model",
    "build_from_config",
    "make_config",
]
