"""An image volume in memory, whatever it was read from.

Project conventions: the array is (Z, Y, X) = (slice, row, column) in stored units (Hounsfield units
for CT), spacing is (sz, sy, sx) in mm. ``affine`` maps NIfTI voxel indices (i, j, k) = (x, y, z), i.e.
``array.transpose(2, 1, 0)``, to RAS+ millimetres, so a mask written with it overlays the input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

if TYPE_CHECKING:
    from service.io.dicom import DicomSeries

#: LPS (DICOM patient coordinates) to RAS (NIfTI world coordinates).
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class ImageVolume:
    """A (Z, Y, X) image with its geometry and where it came from.

    Attributes:
        array: (Z, Y, X) float32 values in stored units (HU for CT).
        spacing: (sz, sy, sx) in mm.
        affine: 4x4 from voxel (x, y, z) indices to RAS+ mm.
        source: ``"dicom"``, ``"nifti"`` or ``"npy"``.
        modality: DICOM modality, when known.
        series: the DICOM series (sorted source instances) for DICOM input.
        nifti_header: the input's NIfTI header, reused for a NIfTI answer.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    source: str
    modality: Optional[str] = None
    series: Optional["DicomSeries"] = None
    nifti_header: Any = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"array must be (Z, Y, X), got shape {self.array.shape}")
        if len(self.spacing) != 3 or not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise ValueError(f"spacing must be 3 positive numbers (sz, sy, sx), got {self.spacing!r}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(v) for v in self.array.shape)  # type: ignore[return-value]

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0


def spacing_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    """Axis-aligned affine for a (Z, Y, X) array of ``spacing`` with no position information."""
    sz, sy, sx = spacing
    return np.diag([sx, sy, sz, 1.0])
