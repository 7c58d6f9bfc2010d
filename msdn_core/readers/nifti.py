"""The one NIfTI reader (nibabel): NIfTI-1/NIfTI-2 bytes or files into a :class:`msdn_core.volume.Volume`.

NIfTI voxel axes (i, j, k) become the (Z, Y, X) = (k, j, i) array; the RAS affine (sform, else qform,
as nibabel picks it) is converted to LPS. A 2D image is one slice; a 4D image with one volume is
squeezed. ``scl_slope``/``scl_inter`` are applied. Shapes are checked against the limits before the
voxel data are read.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Optional

import numpy as np

from msdn_core import geometry
from msdn_core.errors import ErrorCode, InvalidInput
from msdn_core.readers._limits import check_shape, gunzip
from msdn_core.volume import Volume

GZIP_MAGIC = b"\x1f\x8b"


def looks_like_nifti(data: bytes) -> bool:
    """NIfTI-1 or NIfTI-2 header size (348 / 540, either byte order) at the start of uncompressed ``data``."""
    if len(data) < 348:
        return False
    sizes = int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")
    return 348 in sizes or 540 in sizes


def read_nifti_bytes(
    data: bytes, *, name: str, max_slices: Optional[int] = None, max_voxels: Optional[int] = None
) -> Volume:
    """A :class:`Volume` (values as stored, after scaling) from uncompressed or gzipped NIfTI bytes.

    Raises:
        InvalidInput: ``INVALID_VOLUME`` for unreadable content; LimitExceeded over a limit.
    """
    import nibabel as nib

    if data.startswith(GZIP_MAGIC):
        data = gunzip(data, name=name, limit=None if max_voxels is None else max_voxels * 8 + (1 << 20))
    image = None
    errors = []
    for cls in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            image = cls.from_bytes(data)
            break
        except Exception as exc:  # noqa: BLE001 - nibabel raises many types on bad headers
            errors.append(f"{cls.__name__}: {exc}")
    if image is None:
        raise InvalidInput(f"{name}: not a NIfTI-1/NIfTI-2 file ({'; '.join(errors)})", code=ErrorCode.INVALID_VOLUME)
    shape = tuple(int(v) for v in image.header.get_data_shape())
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3:
        raise InvalidInput(
            f"{name}: NIfTI must be 3D (or 2D, or 4D with one volume), got shape {list(shape)}",
            code=ErrorCode.INVALID_VOLUME,
        )
    check_shape(shape[::-1], name=name, max_slices=max_slices, max_voxels=max_voxels)
    try:
        voxels = np.asanyarray(image.dataobj)  # scl_slope / scl_inter applied by nibabel
    except Exception as exc:  # noqa: BLE001
        raise InvalidInput(f"{name}: NIfTI voxel data cannot be read ({exc})", code=ErrorCode.INVALID_VOLUME) from None
    if voxels.dtype.kind not in "biuf":
        raise InvalidInput(f"{name}: NIfTI data type {voxels.dtype} is not supported", code=ErrorCode.INVALID_VOLUME)
    voxels = voxels.reshape(shape)
    zooms = [float(v) for v in image.header.get_zooms()[:3]] + [1.0] * (3 - len(image.header.get_zooms()[:3]))
    if not all(math.isfinite(v) and v > 0 for v in zooms):
        raise InvalidInput(
            f"{name}: NIfTI voxel sizes (pixdim) must be positive, got {zooms}", code=ErrorCode.INVALID_VOLUME
        )
    affine = np.asarray(image.affine, np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        affine = np.diag([zooms[0], zooms[1], zooms[2], 1.0])
    return Volume(
        array=np.ascontiguousarray(voxels.transpose(2, 1, 0)),
        affine=geometry.ras_to_lps(affine),
        source="nifti",
        header=image.header,
    )


def read_nifti_file(path: str | os.PathLike, **limits: Optional[int]) -> Volume:
    """:func:`read_nifti_bytes` of a file (``max_slices`` / ``max_voxels`` keyword limits)."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{p}: cannot be read ({exc})", code=ErrorCode.INVALID_VOLUME) from None
    return read_nifti_bytes(data, name=str(p), **limits)
