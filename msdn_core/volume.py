"""The one volume type: a (Z, Y, X) array on an LPS voxel grid, whatever file it was read from.

Every reader (:mod:`msdn_core.readers`) returns a :class:`Volume`; training (``model_export``) and
serving (``service``) use it as is. The geometry convention is :mod:`msdn_core.geometry`'s: ``affine``
maps voxel indices (x, y, z) = (column, row, slice) to LPS mm; :attr:`Volume.affine_ras` is the NIfTI
(RAS) form; spacing, origin and direction are derived from the affine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import numpy as np

from msdn_core import geometry


@dataclass
class Volume:
    """A (Z, Y, X) image or label volume with its geometry and where it came from.

    Attributes:
        array: (Z, Y, X) values (modality units, Hounsfield units for CT; integer labels for masks).
        affine: 4x4 LPS affine of voxel indices (x, y, z) (:mod:`msdn_core.geometry`), orthogonal.
        source: ``"dicom"``, ``"nifti"``, ``"nrrd"`` or ``"npy"``.
        modality: DICOM modality, when known.
        frame_of_reference_uid: DICOM Frame of Reference UID, when known.
        series: for DICOM input, the :class:`msdn_core.readers.dicom.DicomSeries` (sorted source instances).
        header: the NIfTI header of NIfTI input (reused to write an answer on the same grid).
        duplicates_dropped: instances sent more than once (same SOP Instance UID, same content) and dropped.
        tilt_deg: gantry tilt corrected by resampling (0.0 when none).
        loader: decodes slices into ``array`` on demand (:meth:`load`); None once all are decoded.
        decoded: the slice indices whose values were read, when a reader decoded only some
            (:func:`msdn_core.readers.dicom.read_series` ``slices``); the others are zero. None: all.
    """

    array: np.ndarray
    affine: np.ndarray
    source: str
    modality: Optional[str] = None
    frame_of_reference_uid: Optional[str] = None
    series: Any = field(default=None, repr=False)
    header: Any = field(default=None, repr=False)
    duplicates_dropped: int = 0
    tilt_deg: float = 0.0
    decoded: Optional[np.ndarray] = field(default=None, repr=False)
    loader: Optional[Callable[[int, int], np.ndarray]] = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"array must be (Z, Y, X), got shape {self.array.shape}")
        self.affine = geometry.check_affine(self.affine, what="volume")
        if not all(np.isfinite(s) and s > 0 for s in self.spacing):
            raise ValueError(f"affine must give positive voxel sizes, got {self.spacing!r}")

    def load(self, start: int = 0, stop: Optional[int] = None) -> np.ndarray:
        """The array with slices [start, stop) (default all) decoded, for a reader that decodes on demand
        (``loader``, e.g. :func:`msdn_core.readers.dicom.read_series` ``lazy``); otherwise the array as is.
        """
        if self.loader is not None:
            self.loader(start, self.shape[0] if stop is None else stop)
        return self.array

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X)."""
        return tuple(int(v) for v in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """(sz, sy, sx) in mm."""
        return geometry.spacing_of(self.affine)

    @property
    def origin(self) -> np.ndarray:
        """LPS position (mm) of voxel (0, 0, 0)."""
        return geometry.origin_of(self.affine)

    @property
    def direction(self) -> np.ndarray:
        """3x3 direction cosines (LPS), column k for index k of (x, y, z)."""
        return geometry.direction_of(self.affine)

    @property
    def affine_ras(self) -> np.ndarray:
        """The affine in NIfTI's RAS convention."""
        return geometry.lps_to_ras(self.affine)

    @property
    def voxel_volume_ml(self) -> float:
        """Volume of one voxel in millilitres."""
        return float(np.prod(self.spacing)) / 1000.0

    def slice_positions(self) -> np.ndarray:
        """(Z, 3) LPS position of voxel (0, 0, z) of every slice."""
        z = np.arange(self.shape[0], dtype=np.float64)
        return self.origin[None, :] + z[:, None] * self.affine[:3, 2][None, :]
