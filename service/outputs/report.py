"""The JSON answer of ``POST /segment`` (its pydantic models document the OpenAPI schema)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Optional

import numpy as np
from pydantic import BaseModel, Field

from msdn_core.geometry import lps_to_ras
from service.evaluation import class_summary
from service.outputs import rle

if TYPE_CHECKING:
    from service.result import SegmentationResult


class RLEMask(BaseModel):
    """Label volume, run-length encoded (see ``service.outputs.rle``)."""

    encoding: Literal["rle"] = "rle"
    shape: list[int] = Field(description="[Z, Y, X]")
    order: Literal["C"] = Field("C", description="flat index = (z * Y + y) * X + x")
    dtype: Literal["uint8"] = "uint8"
    starts: list[int] = Field(description="flat index where each run of a non-zero label begins")
    lengths: list[int] = Field(description="voxels in each run")
    values: list[int] = Field(description="label of each run; voxels in no run are background (0)")


class ModelInfo(BaseModel):
    name: str
    version: str
    sha256: str
    provider: str


class ModelGridInfo(BaseModel):
    """The model grid an input was brought onto; the answer (mask, boxes, components) is on the input's grid."""

    shape: list[int] = Field(description="[Z, Y, X] of the model grid")
    spacing: list[float] = Field(description="[sz, sy, sx] in mm of the model grid")
    flipped: list[bool] = Field(description="[x, y, z]: whether the model grid runs against the input's axis")
    permuted: bool = Field(description="whether the input's axes were reordered")
    resampled: list[bool] = Field(description="[z, y, x]: whether the axis was resampled")


class InputInfo(BaseModel):
    source: Literal["dicom", "nifti", "nrrd", "npy"]
    modality: Optional[str] = None
    series_instance_uid: Optional[str] = None
    series_uid_derived: bool = Field(
        False,
        description="the instances carry no SeriesInstanceUID (anonymised): series_instance_uid is derived from"
        " their frame of reference, modality, orientation, pixel spacing and size",
    )
    shape: list[int] = Field(description="[Z, Y, X]")
    spacing: list[float] = Field(description="[sz, sy, sx] in mm")
    duplicates_dropped: int = Field(
        0, description="DICOM instances sent more than once (same SOP Instance UID and content) and dropped"
    )
    gantry_tilt_deg: float = Field(0.0, description="gantry tilt corrected by resampling onto an orthogonal grid")
    model_grid: Optional[ModelGridInfo] = Field(
        None, description="the grid the model ran on when it is not the input's (msdn_core.grid); None: the input's"
    )
    affine_lps: list[list[float]] = Field(
        description="4x4: voxel index (x, y, z) -> LPS mm (DICOM patient coordinates); a voxel's centre is at"
        " integer indices, index z is the mask's first axis (ascending along the slice normal)"
    )
    affine_ras: list[list[float]] = Field(description="the same as NIfTI stores it: voxel index (x, y, z) -> RAS mm")
    sop_instance_uids: Optional[list[str]] = Field(
        None,
        description="DICOM input: the SOP Instance UID of each z index (z follows the slice normal, which can be"
        " the reverse of InstanceNumber or file order); a multi-frame input repeats its one UID",
    )
    frame_numbers: Optional[list[int]] = Field(
        None, description="multi-frame DICOM input: the 1-based frame number of each z index"
    )


class ClassSummary(BaseModel):
    value: int
    name: str
    voxels: int
    volume_ml: float


class Component(BaseModel):
    class_value: int
    class_name: str
    voxels: int
    volume_ml: float
    box: list[int] = Field(description="[x1, y1, z1, x2, y2, z2], continuous pixel coordinates")
    centre: list[float] = Field(description="[x, y, z] mean voxel index of the component")
    centre_mm: list[float] = Field(description="the centre in LPS mm (input.affine_lps applied to centre)")
    box_mm: list[float] = Field(
        description="[x1, y1, z1, x2, y2, z2] LPS mm: the smallest and largest LPS coordinates of the box's"
        " voxels' outer faces"
    )
    score: Optional[float] = Field(
        None,
        description=(
            "proposals: detection score of the best 3D candidate holding it (with confirmation 'segmentation':"
            " that score x segmentation_score); slices: its highest foreground probability; boxes: none"
        ),
    )
    detection_score: Optional[float] = Field(
        None, description="proposals with confirmation 'segmentation': the best holding candidate's detection score"
    )
    segmentation_score: Optional[float] = Field(
        None,
        description="proposals with confirmation 'segmentation': mean whole-slice foreground probability over it",
    )


class UsedBox(BaseModel):
    slice: int
    box: list[float] = Field(description="[x1, y1, x2, y2] in pixels")
    label: Optional[int] = None
    score: Optional[float] = None
    source: Literal["request", "detector"]


class ClassScores(BaseModel):
    value: int
    name: str
    dice: Optional[float] = Field(None, description="None when the class is empty in both masks")
    iou: Optional[float] = None
    hd95_mm: Optional[float] = Field(None, description="None when either mask is empty")
    volume_ml: float
    reference_volume_ml: float


class OverallScores(BaseModel):
    dice: Optional[float] = None
    iou: Optional[float] = None
    hd95_mm: Optional[float] = None
    volume_ml: float
    reference_volume_ml: float


class Metrics(BaseModel):
    """Scores against the ``reference`` mask (definitions in ``service.evaluation``)."""

    classes: list[ClassScores]
    overall: OverallScores = Field(description="foreground (any class) against foreground")
    mean_dice: Optional[float] = Field(None, description="mean Dice over classes not empty in both masks")


class Timing(BaseModel):
    read_s: float
    inference_s: float
    model_calls: int
    total_s: float


class SegmentResponse(BaseModel):
    """Answer of ``POST /segment`` in JSON."""

    model: ModelInfo
    input: InputInfo
    mode: Literal["slices", "boxes", "proposals"]
    classes: list[ClassSummary]
    components: list[Component]
    components_truncated: bool = Field(description="more components than MSDN_MAX_COMPONENTS were found")
    boxes: list[UsedBox] = Field(description="request boxes or detector proposals that were segmented")
    metrics: Optional[Metrics] = None
    mask: RLEMask
    timing: Timing


def build_report(result: "SegmentationResult", *, max_components: int) -> SegmentResponse:
    """The JSON answer for a pipeline result."""
    image, card = result.image, result.card
    names = [c.name for c in card.classes]
    found, truncated = result.components[:max_components], len(result.components) > max_components
    return SegmentResponse(
        model=ModelInfo(name=card.name, version=card.version, sha256=result.model_sha256, provider=result.provider),
        input=InputInfo(
            source=image.source,  # type: ignore[arg-type]
            modality=image.modality,
            series_instance_uid=image.series.series_instance_uid if image.series else None,
            series_uid_derived=bool(image.series and image.series.uid_derived),
            shape=list(image.shape),
            spacing=list(image.spacing),
            duplicates_dropped=image.duplicates_dropped,
            gantry_tilt_deg=round(image.tilt_deg, 4),
            affine_lps=_rows(image.affine),
            affine_ras=_rows(lps_to_ras(image.affine)),
            sop_instance_uids=image.series.sop_instance_uids if image.series else None,
            frame_numbers=list(image.series.frame_numbers) if image.series and image.series.multiframe else None,
            model_grid=None
            if result.grid is None or result.grid.identity
            else ModelGridInfo(
                shape=list(result.grid.shape),
                spacing=[round(v, 6) for v in result.grid.spacing],
                flipped=list(result.grid.mapping.flip),
                permuted=result.grid.mapping.perm != (0, 1, 2),
                resampled=[s != 1.0 for s in result.grid.steps],
            ),
        ),
        mode=result.mode,  # type: ignore[arg-type]
        classes=[ClassSummary(**c) for c in class_summary(result.labels, spacing=image.spacing, class_names=names)],
        components=[Component(**c, **_physical(c, image.affine)) for c in found],
        components_truncated=truncated,
        boxes=[
            UsedBox(slice=b.slice, box=b.xyxy, label=b.label, score=b.score, source=b.source)  # type: ignore[arg-type]
            for b in result.boxes
        ],
        metrics=Metrics(**result.metrics) if result.metrics is not None else None,
        mask=RLEMask(**rle.encode(result.labels)),
        timing=Timing(
            read_s=result.timings["read_s"],
            inference_s=result.run.seconds,
            model_calls=result.run.calls,
            total_s=result.timings["total_s"],
        ),
    )


def _rows(affine: np.ndarray) -> list[list[float]]:
    return [[round(float(v), 6) for v in row] for row in np.asarray(affine, np.float64)]


def _physical(component: dict, affine: np.ndarray) -> dict:
    """``centre_mm`` and ``box_mm`` (LPS) of a component from its voxel centre and box (continuous
    pixel coordinates: voxel j spans [j, j + 1), so a face at c lies at index c - 0.5)."""
    affine = np.asarray(affine, np.float64)
    centre = affine @ np.append(np.asarray(component["centre"], np.float64), 1.0)
    x1, y1, z1, x2, y2, z2 = (float(v) - 0.5 for v in component["box"])
    corners = np.array([[x, y, z, 1.0] for x in (x1, x2) for y in (y1, y2) for z in (z1, z2)]) @ affine.T
    low, high = corners[:, :3].min(axis=0), corners[:, :3].max(axis=0)
    return {
        "centre_mm": [round(float(v), 4) for v in centre[:3]],
        "box_mm": [round(float(v), 4) for v in (*low, *high)],
    }
