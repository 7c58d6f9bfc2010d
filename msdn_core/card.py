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

:class:`Normalization` is the one implementation of that contract (training statistics, evaluation,
calibration and serving all call it); :class:`InputSpec` adds the patch size and size multiple and
carries the behaviour: ``normalise``, ``pad_to_multiple`` / ``unpad`` and ``crop_window`` (the one
crop policy of :mod:`msdn_core.crop`).

A model with detection outputs may carry its proposal operating point, ``detection`` (see
:class:`DetectionOperatingPoint`): the detector score threshold chosen on validation series by
``msdn calibrate`` (``model_export.proposal_threshold``), with what it measured there. The service uses
it as the default ``MSDN_PROPOSAL_SCORE_THRESHOLD`` and answers ``mode=auto`` with proposals only when
a model carries it (or the setting is given). Cards without it (all cards before it existed) still load.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Optional

import numpy as np

from msdn_core import crop
from msdn_core.crop import Window, crop_window
from msdn_core.grid import DEFAULT_SPACING_RTOL, ModelGrid, check_orientation, check_spacing

CARD_KEY = "msdn.model_card"
CARD_FORMAT_VERSION = 1
#: Fixed tensor names of the exported graph.
INPUT_NAME = "image"
OUTPUT_NAME = "probabilities"


@dataclass(frozen=True)
class Coded:
    """A coded concept as DICOM codes it: code value, coding scheme designator (``SCT`` for SNOMED CT),
    code meaning; stored in cards as ``{"code", "scheme", "meaning"}``.

    Raises:
        ValueError: an empty or over-long field (DICOM: code value SH 16, scheme SH 16, meaning LO 64).
    """

    code: str
    scheme: str
    meaning: str

    def __post_init__(self) -> None:
        for name, value, most in (("code", self.code, 16), ("scheme", self.scheme, 16), ("meaning", self.meaning, 64)):
            if not isinstance(value, str) or not value.strip() or len(value) > most:
                raise ValueError(f"coded concept {name} must be 1..{most} characters, got {value!r}")

    @classmethod
    def from_dict(cls, data: Any) -> "Coded":
        if not isinstance(data, dict) or set(data) != {"code", "scheme", "meaning"}:
            raise ValueError(f"a coded concept is {{'code', 'scheme', 'meaning'}}, got {data!r}")
        return cls(str(data["code"]), str(data["scheme"]), str(data["meaning"]))


@dataclass
class ClassInfo:
    """A segmentation class: its label value in masks (1..C), its name, and optionally what it means
    (what a DICOM SEG segment says: ``category`` and ``type`` from DICOM CID 7150 / 7151, e.g. SNOMED CT
    "Morphologically abnormal structure" / "Nodule", an ``anatomic_region``, and a display colour
    ``color_rgb`` 0-255, written as RecommendedDisplayCIELabValue).

    Raises:
        ValueError: ``type`` without ``category`` (or the reverse), or a colour that is not 3 values in 0..255.
    """

    value: int
    name: str
    category: Optional[Coded] = None
    type: Optional[Coded] = None
    anatomic_region: Optional[Coded] = None
    color_rgb: Optional[tuple[int, int, int]] = None

    def __post_init__(self) -> None:
        if (self.category is None) != (self.type is None):
            raise ValueError(f"class {self.name!r}: category and type are given together or not at all")
        if self.color_rgb is not None:
            rgb = tuple(self.color_rgb)
            if len(rgb) != 3 or not all(isinstance(v, int) and 0 <= v <= 255 for v in rgb):
                raise ValueError(f"class {self.name!r}: color_rgb must be 3 integers in 0..255, got {self.color_rgb!r}")
            self.color_rgb = rgb  # type: ignore[assignment]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ClassInfo":
        """A class from its card entry (``value``, ``name`` and the optional coded fields)."""
        unknown = set(data) - {"value", "name", "category", "type", "anatomic_region", "color_rgb"}
        if unknown:
            raise ValueError(f"unknown class field(s) {sorted(unknown)}")
        coded = {k: Coded.from_dict(data[k]) for k in ("category", "type", "anatomic_region") if data.get(k)}
        rgb = data.get("color_rgb")
        return cls(int(data["value"]), str(data["name"]), **coded, color_rgb=None if rgb is None else tuple(rgb))

    def with_meaning(self, entry: dict[str, Any]) -> "ClassInfo":
        """This class with the coded fields of ``entry`` (a class-codes file's entry; ``value`` and ``name`` kept)."""
        return ClassInfo.from_dict(
            {**{k: v for k, v in entry.items() if k not in ("value", "name")}, "value": self.value, "name": self.name}
        )

    def to_dict(self) -> dict[str, Any]:
        """``{"value", "name"}`` plus the coded fields that are set (older readers see what they knew)."""
        out: dict[str, Any] = {"value": self.value, "name": self.name}
        for key in ("category", "type", "anatomic_region"):
            if getattr(self, key) is not None:
                out[key] = asdict(getattr(self, key))
        if self.color_rgb is not None:
            out["color_rgb"] = list(self.color_rgb)
        return out


def with_class_meanings(classes: list[ClassInfo], codes: dict[str, Any]) -> list[ClassInfo]:
    """``classes`` with the coded fields of ``codes`` (a class-codes file: ``{class name or value: entry}``,
    entry as :meth:`ClassInfo.from_dict` without value and name); classes not named keep theirs.

    Raises:
        ValueError: a key that names no class, or a malformed entry.
    """
    if not isinstance(codes, dict):
        raise ValueError("class codes must be a JSON object keyed by class name or value")
    by_key = {c.name: c for c in classes} | {str(c.value): c for c in classes}
    unknown = [k for k in codes if k not in by_key]
    if unknown:
        raise ValueError(f"class codes name no class of the model: {unknown} (classes {[c.name for c in classes]})")
    chosen = {by_key[k].value: entry for k, entry in codes.items()}
    return [c.with_meaning(chosen[c.value]) if c.value in chosen else c for c in classes]


@dataclass(frozen=True)
class Normalization:
    """Image normalisation: clip to ``clip`` (when set), then ``(x - mean) / std``, float32.

    Stored in checkpoints and model cards as ``{"mean", "std", "clip"}``.
    """

    mean: float = 0.0
    std: float = 1.0
    clip: Optional[tuple[float, float]] = None

    def __post_init__(self) -> None:
        if not (isinstance(self.std, (int, float)) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"std must be a positive finite number, got {self.std!r}")
        if not (isinstance(self.mean, (int, float)) and math.isfinite(self.mean)):
            raise ValueError(f"mean must be finite, got {self.mean!r}")
        if self.clip is not None:
            clip = tuple(float(v) for v in self.clip)
            if len(clip) != 2 or clip[0] >= clip[1]:
                raise ValueError(f"clip must be (low, high) with low < high, got {self.clip!r}")
            object.__setattr__(self, "clip", clip)

    def apply(self, x: np.ndarray) -> np.ndarray:
        """Normalised float32 copy of ``x`` (any shape, stored units)."""
        out = np.array(x, dtype=np.float32)  # the one copy; the steps below work in place
        if self.clip is not None:
            np.clip(out, np.float32(self.clip[0]), np.float32(self.clip[1]), out=out)
        out -= np.float32(self.mean)
        out /= np.float32(self.std)
        return out

    def to_dict(self) -> dict[str, Any]:
        """``{"mean", "std", "clip"}``."""
        return {
            "mean": float(self.mean),
            "std": float(self.std),
            "clip": None if self.clip is None else list(self.clip),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Normalization":
        """Inverse of ``to_dict`` (also accepts a model card's ``input`` dict)."""
        clip = data.get("clip")
        return cls(float(data["mean"]), float(data["std"]), None if clip is None else tuple(clip))


def pad_value(volume: np.ndarray, clip: Optional[Sequence[float]] = None) -> float:
    """The fill of padding and of windows reaching outside the image: the volume's lowest value
    (air in CT), clipped to ``clip`` when set (so it normalises like the image's own lowest value)."""
    low = float(np.min(volume)) if np.size(volume) else 0.0
    if clip is not None:
        low = min(max(low, float(clip[0])), float(clip[1]))
    return low


@dataclass
class InputSpec:
    """How to turn an image into network input (see module docstring), with the behaviour."""

    channels: int = 1
    mean: float = 0.0
    std: float = 1.0
    clip: Optional[list[float]] = None
    patch_size: list[int] = field(default_factory=lambda: [128, 128])
    size_multiple: int = 16
    #: The grid the model was trained on (``msdn_core.grid``): voxel size [sy, sx] or [sz, sy, sx] in mm,
    #: and the LPS letters index x, y, z point to (``"LPS"``: the DICOM axial view). None: any (cards
    #: written before them; inputs are then used on their own grid).
    spacing_mm: Optional[list[float]] = None
    orientation: Optional[str] = None

    def __post_init__(self) -> None:
        if self.std <= 0:
            raise ValueError(f"std must be > 0, got {self.std!r}")
        if self.clip is not None and (len(self.clip) != 2 or self.clip[0] >= self.clip[1]):
            raise ValueError(f"clip must be [low, high] with low < high, got {self.clip!r}")
        if not isinstance(self.size_multiple, int) or self.size_multiple < 1:
            raise ValueError(f"size_multiple must be a positive int, got {self.size_multiple!r}")
        if len(self.patch_size) != 2 or any(int(v) < 1 for v in self.patch_size):
            raise ValueError(f"patch_size must be [H, W] of positive ints, got {self.patch_size!r}")
        if self.spacing_mm is not None:
            self.spacing_mm = list(check_spacing(self.spacing_mm))
        if self.orientation is not None:
            self.orientation = check_orientation(self.orientation)

    def model_grid(self, *, rtol: float = DEFAULT_SPACING_RTOL) -> ModelGrid:
        """The grid the model expects its input on (:mod:`msdn_core.grid`); undefined for older cards."""
        return ModelGrid(None if self.spacing_mm is None else tuple(self.spacing_mm), self.orientation, rtol)

    @property
    def normalization(self) -> Normalization:
        """The normalisation part of the spec."""
        return Normalization(float(self.mean), float(self.std), None if self.clip is None else tuple(self.clip))

    def normalise(self, array: np.ndarray) -> np.ndarray:
        """Stored units -> network input: clip, then (x - mean) / std, float32 (any shape)."""
        return self.normalization.apply(array)

    def pad_value(self, volume: np.ndarray) -> float:
        """Fill for padding and outside-image crop pixels of ``volume`` (see :func:`pad_value`)."""
        return pad_value(volume, self.clip)

    def pad_to_multiple(self, array: np.ndarray, fill: float) -> tuple[np.ndarray, tuple[int, int]]:
        """Pad (..., H, W) at the bottom and right to multiples of ``size_multiple`` with ``fill``.

        Returns:
            the padded array and the original (H, W) for :meth:`unpad`.
        """
        return crop.pad_to_multiple(array, self.size_multiple, fill)

    @staticmethod
    def unpad(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
        """Cut (..., H', W') back to the (H, W) that :meth:`pad_to_multiple` returned."""
        return crop.unpad(array, shape)

    def crop_window(
        self,
        box: Sequence[float],
        image_shape: Sequence[int],
        *,
        grow: bool = True,
        offset: Sequence[float] = (0.0, 0.0),
    ) -> Window:
        """Where the patch for ``box`` [x1, y1, x2, y2] goes on an (H, W) image: :mod:`msdn_core.crop`."""
        return crop_window(
            box, image_shape, self.patch_size, size_multiple=self.size_multiple, grow=grow, offset=offset
        )


#: How proposal components are scored (``DetectionOperatingPoint.confirmation``).
CONFIRMATIONS = ("none", "segmentation")


@dataclass
class DetectionCalibration:
    """What the proposal threshold was chosen on and what it gave there (``msdn calibrate``).

    Attributes:
        split: manifest split of the validation series.
        series: number of series.
        nodules: reference nodules in them.
        fp_per_scan_target: the largest false-positive components per scan allowed.
        fp_per_scan: false-positive components per scan at the chosen threshold.
        sensitivity: share of the nodules hit by a component at the chosen threshold.
        mean_series_dice: mean whole-series Dice there (series with an empty reference and answer
            left out); None when no series counts.
        floor: the detector score the candidates were collected down to.
        precision: the precision of the model file that was run (``fp32``).
        manifest: the manifest path as given (informative).
        extend_threshold: the proposal extension threshold of the runs at the chosen threshold
            (``MSDN_PROPOSAL_EXTEND_THRESHOLD``, as clamped; ``msdn_core.proposals``); None: recorded
            before the two-threshold scheme (single threshold).
    """

    split: str
    series: int
    nodules: int
    fp_per_scan_target: float
    fp_per_scan: float
    sensitivity: float
    mean_series_dice: Optional[float] = None
    floor: Optional[float] = None
    precision: str = "fp32"
    manifest: Optional[str] = None
    extend_threshold: Optional[float] = None


@dataclass
class DetectionOperatingPoint:
    """The proposal operating point of a detecting model: ``score_threshold`` in [0, 1].

    ``confirmation`` says which score the threshold applies to: ``none``, the detection score;
    ``segmentation``, the detection score x the component's mean whole-slice foreground probability
    (``msdn_core.postprocess`` step 5). Cards written before it have none.
    """

    score_threshold: float
    calibration: Optional[DetectionCalibration] = None
    confirmation: str = "none"

    def __post_init__(self) -> None:
        value = self.score_threshold
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
            raise ValueError(f"detection.score_threshold must be a number in [0, 1], got {value!r}")
        self.score_threshold = float(value)
        if self.confirmation not in CONFIRMATIONS:
            raise ValueError(f"detection.confirmation must be one of {CONFIRMATIONS}, got {self.confirmation!r}")

    @classmethod
    def from_dict(cls, data: Any) -> "DetectionOperatingPoint":
        """Parse the card's ``detection`` object; raises ``ValueError`` naming what is wrong."""
        if not isinstance(data, dict) or "score_threshold" not in data:
            raise ValueError(f"card 'detection' must be an object with 'score_threshold', got {data!r}")
        unknown = set(data) - {"score_threshold", "calibration", "confirmation"}
        if unknown:
            raise ValueError(f"card 'detection' has unknown keys {sorted(unknown)}")
        calibration = data.get("calibration")
        if calibration is not None:
            if not isinstance(calibration, dict):
                raise ValueError(f"card 'detection.calibration' must be an object, got {calibration!r}")
            calibration = DetectionCalibration(**calibration)
        return cls(data["score_threshold"], calibration, data.get("confirmation", "none"))


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
    #: (``build_variants``); None for fp32 or when not measured. The service serves fp16 on CUDA / int8
    #: on the CPU only when it is recorded and within ``MSDN_FP16_MAX_DICE_LOSS`` / ``MSDN_INT8_MAX_DICE_LOSS``.
    variant_dice_loss: Optional[float] = None
    outputs: dict[str, Any] = field(default_factory=lambda: {"segmentation": OUTPUT_NAME})
    #: The calibrated proposal operating point (module docstring); None: not calibrated.
    detection: Optional[DetectionOperatingPoint] = None
    input_name: str = INPUT_NAME
    format_version: int = CARD_FORMAT_VERSION

    @property
    def num_classes(self) -> int:
        """Foreground classes C."""
        return len(self.classes)

    @property
    def score_threshold(self) -> Optional[float]:
        """The calibrated proposal score threshold, or None (no ``detection`` block)."""
        return None if self.detection is None else self.detection.score_threshold

    @property
    def confirmation(self) -> str:
        """Which score the calibrated threshold applies to (``DetectionOperatingPoint.confirmation``)."""
        return "none" if self.detection is None else self.detection.confirmation

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (``detection`` left out when None, so older readers still parse it)."""
        data = asdict(self)
        data["classes"] = [c.to_dict() for c in self.classes]
        for key in ("spacing_mm", "orientation"):  # cards without a model grid read as before them
            if data["input"].get(key) is None:
                del data["input"][key]
        if data["detection"] is None:
            del data["detection"]
            return data
        if (data["detection"].get("calibration") or {}).get("extend_threshold", 0) is None:
            del data["detection"]["calibration"]["extend_threshold"]  # calibrated before the two thresholds
        if data["detection"].get("confirmation") == "none":
            del data["detection"]["confirmation"]  # as cards written before confirmation
        return data

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
            classes = [ClassInfo.from_dict(c) for c in data["classes"]]
            spec = InputSpec(**data["input"])
            rest = {k: v for k, v in data.items() if k not in ("classes", "input", "detection")}
            detection = data.get("detection")
            if detection is not None:
                detection = DetectionOperatingPoint.from_dict(detection)
                if "detection" not in (data.get("outputs") or {}):
                    raise ValueError("card has a 'detection' operating point but no detection outputs")
            card = cls(classes=classes, input=spec, detection=detection, **rest)
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
