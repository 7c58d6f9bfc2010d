"""``GET /v1/model``: the served model's card, input spec, providers and SHA-256."""

from __future__ import annotations

from typing import Any, Literal, Optional

from fastapi import APIRouter
from pydantic import BaseModel, Field

from service.deps import RuntimeDep, SettingsDep
from service.operating_point import auto_mode

router = APIRouter(tags=["model"])


class ClassOut(BaseModel):
    value: int
    name: str


class InputOut(BaseModel):
    name: str
    channels: int
    mean: float
    std: float
    clip: Optional[list[float]] = None
    patch_size: list[int]
    size_multiple: int
    spacing_mm: Optional[list[float]] = Field(
        None, description="the model grid's voxel size, [sy, sx] or [sz, sy, sx] mm (None: inputs keep their own)"
    )
    orientation: Optional[str] = Field(
        None, description="the model grid's axes: LPS letters index x, y, z point to (None: inputs keep their own)"
    )


class ModelDescription(BaseModel):
    name: str
    version: str
    method: str
    classes: list[ClassOut]
    input: InputOut = Field(description="normalisation: clip, then (x - mean) / std; H, W multiples of size_multiple")
    model_grid: str = Field(
        description="how inputs are brought onto the model's grid (msdn_core.grid), or that they are not"
    )
    outputs: dict[str, Any]
    detection: bool = Field(description="the model also proposes boxes (proposal mode)")
    proposal_score_threshold: Optional[float] = Field(
        None,
        description=(
            "detection models: the operating threshold, least best slice score of a kept 3D candidate "
            "(None: no detection)"
        ),
    )
    proposal_extend_threshold: Optional[float] = Field(
        None,
        description=(
            "detection models: slice boxes down to this score are linked into the candidates (MSDN_PROPOSAL_EXTEND_"
            "THRESHOLD clamped to at most the operating threshold; equal to it: single threshold; None: no detection)"
        ),
    )
    proposal_threshold_source: Optional[Literal["setting", "card", "default"]] = Field(
        None,
        description=(
            "where that threshold comes from: MSDN_PROPOSAL_SCORE_THRESHOLD (setting), the model card's calibrated "
            "detection.score_threshold (card; msdn calibrate), or the fixed 0.5 (default)"
        ),
    )
    proposal_confirmation: Optional[Literal["none", "segmentation"]] = Field(
        None,
        description=(
            "detection models: the component score the threshold applies to: the detection score (none) or "
            "detection x mean whole-slice foreground probability (segmentation); MSDN_PROPOSAL_CONFIRMATION, "
            "else the card's (None: no detection)"
        ),
    )
    auto_mode: Literal["proposals", "slices"] = Field(
        description="what mode=auto runs without boxes: proposals for a detecting model with a card or set threshold"
    )
    precision: str = Field(
        description="precision really served (fp32; fp16: the fp16 variant or TensorRT fp16; int8: the int8 variant)"
    )
    precision_reason: str = Field("", description="why this precision (MSDN_PRECISION and the recorded Dice loss)")
    variant_dice_loss: Optional[float] = Field(
        None, description="Dice points the served variant (fp16 / int8) loses against fp32, as its card records"
    )
    opset: Optional[int] = None
    validation_dice: Optional[float] = None
    provider: str = Field(description="the execution provider doing the work")
    providers: list[str] = Field(description="ONNX Runtime execution providers in use, best first")
    io_binding: bool = Field(description="inputs and outputs go through ONNX Runtime IO binding (GPU)")
    sha256: str = Field(description="SHA-256 of the ONNX file")
    file: str
    card: dict[str, Any] = Field(description="the full model card")


@router.get("/v1/model", response_model=ModelDescription, summary="the served model")
async def model_card(runtime: RuntimeDep, settings: SettingsDep) -> ModelDescription:
    threshold = settings.proposal_threshold(runtime.card)
    extend = min(settings.proposal_extend_threshold, threshold.value)
    return ModelDescription(
        **runtime.describe(),
        proposal_score_threshold=threshold.value if runtime.has_detection else None,
        proposal_threshold_source=threshold.source if runtime.has_detection else None,
        proposal_extend_threshold=extend if runtime.has_detection else None,
        proposal_confirmation=settings.proposal_confirmation_for(runtime.card) if runtime.has_detection else None,
        auto_mode=auto_mode(has_boxes=False, has_detection=runtime.has_detection, threshold=threshold),
    )
