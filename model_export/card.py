"""The model card: what a checkpoint and an exported ONNX model say about themselves.

Torch-free, so the service can read it. In an ONNX file the card is stored as JSON under the
``metadata_props`` key ``CARD_KEY`` (plus a few flat keys for tools that list metadata); the same JSON
is written beside the model as ``<model>.card.json``.

Normalisation contract (training, export and serving all follow it): an image in its stored units
(Hounsfield units for CT) is clipped to ``input.clip`` when set, then mapped to
``(x - input.mean) / input.std``; the network sees (B, channels, H, W) float32 with H and W multiples
of ``input.size_multiple``. The segmentation output is (B, C+1, H, W) softmax probabilities; the label
of a pixel is the argmax channel, channel 0 being background and channel k the class whose ``value``
is k.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

CARD_KEY = "msdn.model_card"
CARD_FORMAT_VERSION = 1
#: Fixed tensor names of the exported graph.
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


@dataclass
class ClassInfo:
    """A segmentation class: its label value in masks (1..C) and its name."""

    value: int
    name: str


@dataclass
class InputSpec:
    """How to turn an image into network input (see module docstring)."""

    channels: int = 1
    mean: float = 0.0
    std: float = 1.0
    clip: Optional[list[float]] = None
    patch_size: list[int] = field(default_factory=lambda: [128, 128])
    size_multiple: int = 16

    def __post_init__(self) -> None:
        if self.std <= 0:
            raise ValueError(f"std must be > 0, got {self.std!r}")
        if self.clip is not None and (len(self.clip) != 2 or self.clip[0] >= self.clip[1]):
            raise ValueError(f"clip must be [low, high] with low < high, got {self.clip!r}")


@dataclass
class ModelCard:
    """Self-description of a model; stored in checkpoints and ONNX files."""

    name: str
    method: str
    classes: list[ClassInfo]
    input: InputSpec
    version: str = "0.1.0"
    architecture: dict[str, Any] = field(default_factory=dict)
    training: dict[str, Any] = field(default_factory=dict)
    validation_dice: Optional[float] = None
    checkpoint_sha256: Optional[str] = None
    export_date: Optional[str] = None
    opset: Optional[int] = None
    precision: str = "fp32"
    #: Dice points this variant (fp16 / int8) loses against its fp32 export on the validation patches
    #: (``build_variants``); None for fp32 or when not measured. The service serves fp16 on CUDA only
    #: when it is recorded and within ``MSDN_FP16_MAX_DICE_LOSS``.
    variant_dice_loss: Optional[float] = None
    outputs: dict[str, Any] = field(default_factory=lambda: {"segmentation": OUTPUT_NAME})
    input_name: str = INPUT_NAME
    format_version: int = CARD_FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        """Foreground classes C."""
        return len(self.classes)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        return asdict(self)

    def to_json(self) -> str:
        """Compact JSON."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelCard":
        """Parse a card; raises ``ValueError`` naming what is missing or wrong."""
        if not isinstance(data, dict):
            raise ValueError("model card must be a JSON object")
        version = data.get("format_version", CARD_FORMAT_VERSION)
        if version != CARD_FORMAT_VERSION:
            raise ValueError(f"unsupported model card format_version {version!r} (expected {CARD_FORMAT_VERSION})")
        missing = [k for k in ("name", "method", "classes", "input") if k not in data]
        if missing:
            raise ValueError(f"model card is missing {missing}")
        try:
            classes = [ClassInfo(int(c["value"]), str(c["name"])) for c in data["classes"]]
            spec = InputSpec(**data["input"])
            rest = {k: v for k, v in data.items() if k not in ("classes", "input")}
            card = cls(classes=classes, input=spec, **rest)
        except (TypeError, KeyError) as exc:
            raise ValueError(f"malformed model card: {exc}") from exc
        if sorted(c.value for c in classes) != list(range(1, len(classes) + 1)):
            raise ValueError(f"class values must be 1..C, got {[c.value for c in classes]}")
        return card

    @classmethod
    def from_json(cls, text: str) -> "ModelCard":
        """Parse ``to_json`` output."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"model card is not valid JSON: {exc}") from exc
        return cls.from_dict(data)
