"""Voxel geometry: the one affine convention, orientation, shear and gantry tilt.

Convention (used by :class:`msdn_core.volume.Volume` and every reader):

* arrays are (Z, Y, X) = (slice, row, column);
* the 4x4 ``affine`` maps voxel indices ``(x, y, z, 1)`` = (column, row, slice), i.e. the indices of
  ``array.transpose(2, 1, 0)``, to **LPS** millimetres (DICOM patient coordinates: +x to the patient's
  left, +y posterior, +z superior). Column ``k`` of ``affine[:3, :3]`` is the step of index ``k`` in mm;
* NIfTI stores RAS+ world coordinates: :func:`lps_to_ras` / :func:`ras_to_lps` convert (the same
  matrix, diag(-1, -1, 1, 1), both ways). NRRD names its space; the NRRD reader converts to LPS.

Spacing, origin and direction are derived from the affine (:func:`spacing_of`, :func:`origin_of`,
:func:`direction_of`), never stored apart from it.

Gantry tilt (one policy, :func:`correct_tilt`): a CT acquired with a tilted gantry has slices whose
positions step along a direction that is not the normal of their orientation, so the voxel grid is
sheared. Up to ``tilt_tol_deg`` (default 0.01 degrees) the shear is numerical noise and the affine is
made orthogonal as it is. Above it, and up to ``max_tilt_deg`` (default 30 degrees), every slice is
resampled in its own plane (linear interpolation, the volume minimum outside the field of view) onto
an orthogonal grid that keeps the first slice, the in-plane grid and the spacing along the normal, as
dcm2niix does; ``Volume.tilt_deg`` records the corrected angle. Beyond ``max_tilt_deg`` the series is
refused with ``ErrorCode.INCONSISTENT_GEOMETRY``.

Grid matching (:func:`grid_mapping`, :func:`map_to_grid`): an array on one grid is brought onto
another grid when the two grids hold the same voxel centres, i.e. the voxel-to-voxel transform is an
axis permutation with flips (within a tolerance in voxels); any other pair of grids is refused with
``ErrorCode.REFERENCE_MISMATCH`` naming both geometries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from msdn_core.errors import ErrorCode, InvalidInput

#: LPS (DICOM patient coordinates) <-> RAS (NIfTI world coordinates); its own inverse.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
RAS_TO_LPS = LPS_TO_RAS


def lps_to_ras(affine: np.ndarray) -> np.ndarray:
    """An LPS affine as the RAS affine NIfTI stores."""
    return LPS_TO_RAS @ np.asarray(affine, np.float64)


def ras_to_lps(affine: np.ndarray) -> np.ndarray:
    """A RAS (NIfTI) affine as the LPS affine of this package."""
    return RAS_TO_LPS @ np.asarray(affine, np.float64)


def spacing_of(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size (sz, sy, sx) in mm: the lengths of the affine's slice, row and column steps."""
    norms = np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)
    return (float(norms[2]), float(norms[1]), float(norms[0]))


def origin_of(affine: np.ndarray) -> np.ndarray:
    """Position (LPS mm) of the centre of voxel (0, 0, 0)."""
    return np.asarray(affine, np.float64)[:3, 3].copy()


def direction_of(affine: np.ndarray) -> np.ndarray:
    """3x3 unit direction cosines; column k is the direction of index k (x, y, z)."""
    m = np.asarray(affine, np.float64)[:3, :3]
    return m / np.linalg.norm(m, axis=0, keepdims=True)


def shear_deg(affine: np.ndarray) -> float:
    """Largest deviation from 90 degrees between two index directions of ``affine`` (0 for a proper grid)."""
    d = direction_of(affine)
    worst = 0.0
    for a, b in ((0, 1), (0, 2), (1, 2)):
        cos = float(np.clip(abs(d[:, a] @ d[:, b]), 0.0, 1.0))
        worst = max(worst, 90.0 - float(np.degrees(np.arccos(cos))))
    return worst


def axis_affine(spacing: Sequence[float], origin: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """Axis-aligned LPS affine for (sz, sy, sx) spacing."""
    sz, sy, sx = (float(v) for v in spacing)
    out = np.diag([sx, sy, sz, 1.0])
    out[:3, 3] = np.asarray(origin, np.float64)
    return out


def describe(shape: Sequence[int], affine: np.ndarray) -> dict:
    """Shape, spacing, origin and direction of a grid, rounded, for messages and error details."""
    return {
        "shape_zyx": [int(v) for v in shape],
        "spacing_zyx_mm": [round(v, 4) for v in spacing_of(affine)],
        "origin_lps_mm": np.round(origin_of(affine), 3).tolist(),
        "direction_xyz": np.round(direction_of(affine), 3).tolist(),
    }


def check_affine(affine: np.ndarray, *, what: str) -> np.ndarray:
    """``affine`` as a finite, invertible float64 4x4, else ``INCONSISTENT_GEOMETRY``."""
    a = np.asarray(affine, np.float64)
    if a.shape != (4, 4) or not np.all(np.isfinite(a)) or abs(np.linalg.det(a[:3, :3])) < 1e-12:
        raise InvalidInput(f"{what}: the affine is not a finite invertible 4x4", code=ErrorCode.INCONSISTENT_GEOMETRY)
    return a


# --------------------------------------------------------------------------------------- gantry tilt


def tilt_deg(normal: np.ndarray, step: np.ndarray) -> float:
    """Angle (degrees) between the slice normal and the step from one slice to the next."""
    n = np.linalg.norm(step)
    if n == 0:
        return 0.0
    cos = float(np.clip(abs(normal @ step) / n, 0.0, 1.0))
    return float(np.degrees(np.arccos(cos)))


def correct_tilt(
    array: np.ndarray,
    affine: np.ndarray,
    *,
    tilt_tol_deg: float = 0.01,
    max_tilt_deg: float = 30.0,
    what: str = "series",
) -> tuple[np.ndarray, np.ndarray, float]:
    """Apply the gantry-tilt policy (module docstring) to a (Z, Y, X) array on a sheared LPS grid.

    Args:
        array: (Z, Y, X) values.
        affine: LPS affine whose x and y columns are orthogonal (one slice's plane) and whose z column
            is the step between slices, possibly not along the plane's normal.
        tilt_tol_deg: tilts up to this are not resampled (the affine is made orthogonal).
        max_tilt_deg: tilts above this are refused.
        what: names the series in messages.

    Returns:
        ``(array, affine, tilt)``: the array on the orthogonal grid, its affine, and the tilt in degrees
        that was corrected (0.0 when none).
    """
    affine = np.asarray(affine, np.float64)
    row, col, step = affine[:3, 0], affine[:3, 1], affine[:3, 2]
    sx, sy = float(np.linalg.norm(row)), float(np.linalg.norm(col))
    normal = np.cross(row / sx, col / sy)
    if normal @ step < 0:
        normal = -normal
    angle = tilt_deg(normal, step)
    out = affine.copy()
    sz = float(normal @ step)
    out[:3, 2] = normal * sz
    if angle <= tilt_tol_deg or array.shape[0] < 2:
        return array, out, 0.0
    if angle > max_tilt_deg:
        raise InvalidInput(
            f"{what}: gantry tilt {angle:.2f} degrees is over the {max_tilt_deg:g} degrees this reader corrects",
            code=ErrorCode.INCONSISTENT_GEOMETRY,
            detail={"tilt_deg": round(angle, 3), "max_tilt_deg": max_tilt_deg},
        )
    from scipy import ndimage

    inplane = step - normal * sz  # in-plane offset of slice z+1 from slice z, mm
    dx, dy = float(inplane @ row) / sx**2, float(inplane @ col) / sy**2  # in voxels
    fill = float(array.min()) if array.size else 0.0
    result = np.empty(array.shape, np.float32 if array.dtype.kind == "f" else np.float64)
    for z in range(array.shape[0]):
        # The orthogonal grid's voxel (x, y, z) lies at (x - z*dx, y - z*dy) of the acquired slice z.
        result[z] = ndimage.shift(
            array[z].astype(np.float64), (z * dy, z * dx), order=1, mode="constant", cval=fill, prefilter=False
        )
    return result.astype(array.dtype, copy=False), out, angle


def to_acquired_slices(
    labels: np.ndarray, affine: np.ndarray, positions: np.ndarray, *, inverse: bool = False
) -> np.ndarray:
    """Labels on a tilt-corrected grid moved back onto the slices as acquired (nearest neighbour).

    Args:
        labels: (Z, Y, X) on the orthogonal grid of ``affine`` (with ``inverse``: on the acquired slices).
        affine: the corrected LPS affine (:func:`correct_tilt`).
        positions: (Z, 3) ImagePositionPatient of the acquired slices (LPS mm).
        inverse: move labels of the acquired slices onto the orthogonal grid instead.

    Used to write a DICOM SEG on the source instances of a gantry-tilted series, and to read one.
    """
    from scipy import ndimage

    affine = np.asarray(affine, np.float64)
    row, col = affine[:3, 0], affine[:3, 1]
    out = np.empty_like(labels)
    for z in range(labels.shape[0]):
        offset = np.asarray(positions[z], np.float64) - (affine[:3, 3] + z * affine[:3, 2])
        ox, oy = float(offset @ row) / float(row @ row), float(offset @ col) / float(col @ col)
        sign = 1.0 if inverse else -1.0
        out[z] = ndimage.shift(labels[z], (sign * oy, sign * ox), order=0, mode="constant", cval=0)
    return out


# --------------------------------------------------------------------------------------- grid mapping


@dataclass(frozen=True)
class GridMapping:
    """How to index a source array to get the destination grid: ``dst = src.transpose(perm)[flips]``.

    Attributes:
        perm: for each destination axis (x, y, z), the source axis (x, y, z) it reads.
        flip: for each destination axis, whether the source axis runs backwards.
    """

    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]

    @property
    def identity(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flip)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """``array`` (Z, Y, X, ...) on the source grid, re-indexed onto the destination grid (a view)."""
        if self.identity:
            return array
        order = [2 - p for p in self.perm[::-1]] + list(range(3, array.ndim))
        out = array.transpose(order)
        index = tuple(slice(None, None, -1) if f else slice(None) for f in self.flip[::-1])
        return out[index]

    def inverse(self) -> "GridMapping":
        """The mapping from the destination grid back onto the source grid."""
        perm, flip = [0, 0, 0], [False, False, False]
        for j, i in enumerate(self.perm):
            perm[i], flip[i] = j, self.flip[j]
        return GridMapping(tuple(perm), tuple(flip))  # type: ignore[arg-type]


def _signed_permutation(m: np.ndarray, tol_voxels: float) -> tuple[np.ndarray | None, np.ndarray]:
    """The index transform ``m``'s linear part rounded to a signed permutation (None when it is none
    within ``tol_voxels``), and its translation."""
    lin, t = m[:3, :3], m[:3, 3]
    rounded = np.round(lin)
    if np.max(np.abs(lin - rounded)) > tol_voxels:
        return None, t
    if not (np.all(np.abs(rounded).sum(axis=0) == 1) and np.all(np.abs(rounded).sum(axis=1) == 1)):
        return None, t
    return rounded, t


def grid_mapping(
    src_shape: Sequence[int],
    src_affine: np.ndarray,
    dst_shape: Sequence[int],
    dst_affine: np.ndarray,
    *,
    tol_voxels: float = 0.01,
) -> GridMapping | None:
    """The permutation and flips that carry the source voxel grid onto the destination grid, or None.

    Shapes are (Z, Y, X); affines follow the module convention (any common world frame). The two grids
    must hold the same voxel centres: the destination-to-source index transform is a signed
    permutation (entries within ``tol_voxels``) whose translation maps the destination's index range
    exactly onto the source's.
    """
    src_shape_xyz = tuple(int(v) for v in src_shape)[::-1]
    dst_shape_xyz = tuple(int(v) for v in dst_shape)[::-1]
    m = np.linalg.inv(np.asarray(src_affine, np.float64)) @ np.asarray(dst_affine, np.float64)
    rounded, t = _signed_permutation(m, tol_voxels)
    if rounded is None:
        return None
    perm, flip = [0, 0, 0], [False, False, False]
    for j in range(3):
        i = int(np.flatnonzero(rounded[:, j])[0])
        perm[j] = i
        flip[j] = bool(rounded[i, j] < 0)
        if src_shape_xyz[i] != dst_shape_xyz[j]:
            return None
        want = src_shape_xyz[i] - 1 if flip[j] else 0
        if abs(t[i] - want) > tol_voxels:
            return None
    return GridMapping(tuple(perm), tuple(flip))  # type: ignore[arg-type]


def subgrid_placement(
    src_shape: Sequence[int],
    src_affine: np.ndarray,
    dst_shape: Sequence[int],
    dst_affine: np.ndarray,
    *,
    tol_voxels: float = 0.01,
) -> tuple[tuple[int, int, int], tuple[bool, bool, bool], tuple[slice, slice, slice]] | None:
    """Where a voxel-aligned source grid lies inside the destination grid, or None.

    The source's voxel centres must be destination voxel centres (a signed permutation of axes with an
    integer offset, within ``tol_voxels``) and all inside it, e.g. the 12-slice box a dcmqi / Slicer
    export keeps of a 20-slice series.

    Returns:
        ``(axes, flips, window)``: for each destination axis ``(x, y, z)`` the source axis ``(x, y, z)``
        it runs along and whether reversed, and the destination ``(Z, Y, X)`` slices the source fills.
    """
    src_xyz = tuple(int(v) for v in src_shape)[::-1]
    dst_xyz = tuple(int(v) for v in dst_shape)[::-1]
    m = np.linalg.inv(np.asarray(dst_affine, np.float64)) @ np.asarray(src_affine, np.float64)  # src -> dst index
    rounded, t = _signed_permutation(m, tol_voxels)
    if rounded is None or np.max(np.abs(t - np.round(t))) > tol_voxels:
        return None
    axes, flips, window = [0, 0, 0], [False, False, False], [slice(0), slice(0), slice(0)]
    for b in range(3):
        a = int(np.flatnonzero(rounded[b])[0])
        sign, offset = int(rounded[b, a]), int(round(t[b]))
        low = offset if sign > 0 else offset - (src_xyz[a] - 1)
        high = low + src_xyz[a]
        if low < 0 or high > dst_xyz[b]:
            return None
        axes[b], flips[b], window[b] = a, sign < 0, slice(low, high)
    return tuple(axes), tuple(flips), (window[2], window[1], window[0])  # type: ignore[return-value]


def map_to_grid(
    array: np.ndarray,
    src_affine: np.ndarray,
    dst_shape: Sequence[int],
    dst_affine: np.ndarray,
    *,
    tol_voxels: float = 0.01,
    what: str = "reference",
    subgrid: bool = False,
) -> np.ndarray:
    """A (Z, Y, X) ``array`` on ``src_affine``'s grid, re-indexed onto the destination grid (exactly).

    With ``subgrid`` a voxel-aligned source covering only part of the destination
    (:func:`subgrid_placement`) is placed there and zero elsewhere.

    Raises:
        InvalidInput: ``REFERENCE_MISMATCH`` when the grids are not a permutation/flip of each other (nor,
            with ``subgrid``, a voxel-aligned part); the message and ``detail`` name both geometries.
    """
    mapping = grid_mapping(array.shape, src_affine, dst_shape, dst_affine, tol_voxels=tol_voxels)
    placed = None
    if mapping is None and subgrid:
        placed = subgrid_placement(array.shape, src_affine, dst_shape, dst_affine, tol_voxels=tol_voxels)
    if placed is not None:
        axes, flips, window = placed
        xyz = np.asarray(array).transpose(2, 1, 0).transpose(axes)  # destination (x, y, z) order
        xyz = xyz[tuple(slice(None, None, -1) if f else slice(None) for f in flips)]
        out = np.zeros(tuple(int(v) for v in dst_shape), dtype=np.asarray(array).dtype)
        out[window] = xyz.transpose(2, 1, 0)
        return out
    if mapping is None:
        src, dst = describe(array.shape, src_affine), describe(dst_shape, dst_affine)
        raise InvalidInput(
            f"{what}: its voxel grid {src} is not the input's grid {dst} up to axis order and flips",
            code=ErrorCode.REFERENCE_MISMATCH,
            detail={"reference": src, "input": dst},
        )
    if mapping.identity:
        return array
    return np.ascontiguousarray(mapping.apply(array))
