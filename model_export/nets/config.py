"""Architecture configuration shared by every model of the family, and the presets."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from model_export.nets.blocks import check_positive_int, check_rate

#: Dilation factor of each of the 9 feature stages (4 encoder, bottleneck, 4 decoder), paper 2.2.
PAPER_DILATIONS: tuple[int, ...] = (1, 2, 2, 2, 4, 2, 2, 2, 1)
#: Spatial strides of the 4 decoder stages, deepest first.
DECODER_STRIDES: tuple[int, ...] = (8, 4, 2, 1)
#: Input height and width must be multiples of this (4 max-poolings).
SIZE_MULTIPLE = 16
MODEL_NAMES: tuple[str, ...] = ("unet", "unet_sse", "ms_net", "msdn_minus", "msdn")


@dataclass(frozen=True)
class NetConfig:
    """Everything needed to rebuild a network; stored verbatim in checkpoints and model cards.

    Args:
        name: one of ``MODEL_NAMES``.
        in_channels: image channels.
        num_classes: foreground classes C; the segmentation output has C + 1 channels.
        base_channels: width of the first stage; doubles per level (5 levels).
        dilations: dilation of each of the 9 stages.
        dropout: channel-dropout rate on each stage's output.
        head_channels: width of the detection unit's conv towers (256 in the paper).
        head_convs: 3x3 convs per tower before the output conv (4 in the paper).
        detection_strides: decoder levels (by stride) that feed the detection unit.
        anchor_size_factor: anchor base size of a level = factor x its stride (pixels).
        anchor_scales: anchor size multipliers (3 in the paper's A = 9).
        anchor_ratios: anchor aspect ratios height/width (3 in the paper's A = 9).
        anchor_shapes: explicit anchor shapes instead of factor/scales/ratios: one list of (w, h) or
            (w, h, dx, dy) pixels (dx, dy: centre shift from the cell centre) per detection level (same
            order as ``detection_strides``, same count A on every level), e.g. fitted to the training boxes
            (``model_export.detection.anchor_fit``).
        detach_gates: the binary-sSE links read detached detection features, so the segmentation loss
            does not train the detection encoder (mechanism ablation; MSDN/MSDN- only).
    """

    name: str = "msdn"
    in_channels: int = 1
    num_classes: int = 1
    base_channels: int = 32
    dilations: tuple[int, ...] = PAPER_DILATIONS
    dropout: float = 0.1
    head_channels: int = 256
    head_convs: int = 4
    detection_strides: tuple[int, ...] = DECODER_STRIDES
    anchor_size_factor: float = 4.0
    anchor_scales: tuple[float, ...] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3))
    anchor_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    anchor_shapes: tuple[tuple[tuple[float, ...], ...], ...] | None = None
    detach_gates: bool = False
    preset: str = field(default="paper", compare=False)

    def __post_init__(self) -> None:
        if self.name not in MODEL_NAMES:
            raise ValueError(f"name must be one of {MODEL_NAMES}, got {self.name!r}")
        for name in ("in_channels", "num_classes", "base_channels", "head_channels", "head_convs"):
            check_positive_int(name, getattr(self, name))
        check_rate("dropout", self.dropout)
        # JSON round trips give lists: normalise to tuples so configs compare equal.
        for name in ("dilations", "detection_strides", "anchor_scales", "anchor_ratios"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.dilations) != 9 or any(
            isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in self.dilations
        ):
            raise ValueError(f"dilations must be 9 positive integers, got {self.dilations!r}")
        if (
            not self.detection_strides
            or any(s not in DECODER_STRIDES for s in self.detection_strides)
            or len(set(self.detection_strides)) != len(self.detection_strides)
        ):
            raise ValueError(
                f"detection_strides must be distinct values from {DECODER_STRIDES}, got {self.detection_strides!r}"
            )
        if not (isinstance(self.anchor_size_factor, (int, float)) and self.anchor_size_factor > 0):
            raise ValueError(f"anchor_size_factor must be > 0, got {self.anchor_size_factor!r}")
        for name in ("anchor_scales", "anchor_ratios"):
            values = getattr(self, name)
            if not values or any(not (isinstance(v, (int, float)) and v > 0 and math.isfinite(v)) for v in values):
                raise ValueError(f"{name} must be a non-empty list of positive numbers, got {values!r}")
        if self.anchor_shapes is not None:
            try:
                shapes = tuple(tuple(tuple(float(v) for v in a) for a in level) for level in self.anchor_shapes)
                if any(len(a) not in (2, 4) for level in shapes for a in level):
                    raise TypeError
            except (TypeError, ValueError):
                raise ValueError(
                    f"anchor_shapes must be one list of (w, h) per detection level, got {self.anchor_shapes!r}"
                ) from None
            if (
                len(shapes) != len(self.detection_strides)
                or not shapes[0]
                or any(len(level) != len(shapes[0]) for level in shapes)
                or any(not (v > 0 and math.isfinite(v)) for level in shapes for a in level for v in a[:2])
                or any(not math.isfinite(v) for level in shapes for a in level for v in a)
            ):
                raise ValueError(
                    "anchor_shapes must hold one non-empty list of positive (w, h) per detection level "
                    f"({len(self.detection_strides)} levels), all of the same length, got {self.anchor_shapes!r}"
                )
            object.__setattr__(self, "anchor_shapes", shapes)
        if not isinstance(self.detach_gates, bool):
            raise ValueError(f"detach_gates must be a bool, got {self.detach_gates!r}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Channels of the 5 levels (4 encoder + bottleneck)."""
        return tuple(self.base_channels * 2**i for i in range(5))

    @property
    def num_anchors(self) -> int:
        """Anchors per position A."""
        if self.anchor_shapes is not None:
            return len(self.anchor_shapes[0])
        return len(self.anchor_scales) * len(self.anchor_ratios)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; ``NetConfig.from_dict`` inverts it."""

        def plain(v: Any) -> Any:
            return [plain(x) for x in v] if isinstance(v, (tuple, list)) else v

        return {k: plain(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NetConfig":
        """Rebuild from ``to_dict`` output; unknown keys raise ``ValueError``."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown NetConfig keys: {sorted(unknown)}")
        return cls(**data)


#: Preset overrides. ``paper`` is faithful to the paper; ``small`` is sized for a CPU.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "small": {"base_channels": 16, "head_channels": 64, "detection_strides": (8, 4, 2)},
}


def make_config(name: str, *, preset: str = "paper", **overrides: Any) -> NetConfig:
    """Config for ``name`` from ``preset`` with ``overrides`` applied (overrides win)."""
    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    known = {f.name for f in fields(NetConfig)} - {"name", "preset"}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown model options: {sorted(unknown)}")
    return replace(NetConfig(name=name, preset=preset), **{**PRESETS[preset], **overrides})
