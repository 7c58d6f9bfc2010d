"""The one NIfTI reader (nibabel): NIfTI-1/NIfTI-2 bytes or files into a :class:`msdn_core.volume.Volume`.

NIfTI voxel axes (i, j, k) become the (Z, Y, X) = (k, j, i) array; the RAS affine (sform, else qform,
as nibabel picks it) is converted to LPS. A 2D image is one slice; a 4D image with one volume is
squeezed. ``scl_slope``/``scl_inter`` are applied. Shapes are checked against the limits before the
voxel data are read.

Partial reads: with the keyword option ``slices`` (a function of the (Z, Y, X) shape returning the
slices needed) only those slices are read and converted; from an uncompressed file or upload
(:func:`read_nifti_fileobj`, :func:`read_nifti_file`) only their bytes are read. Gzipped data are
decompressed whole first (gzip has no random access).
"""

from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Optional, Sequence

import numpy as np

from msdn_core import geometry
from msdn_core.errors import ErrorCode, InvalidInput
from msdn_core.readers._limits import check_shape, gunzip
from msdn_core.volume import Volume

GZIP_MAGIC = b"\x1f\x8b"

#: ``slices`` option of the readers: called with the (Z, Y, X) shape and the LPS affine of the grid,
#: returns the slices needed (None: all).
SliceChooser = Callable[[tuple[int, int, int], np.ndarray], Optional[Sequence[int]]]


def looks_like_nifti(data: bytes) -> bool:
    """NIfTI-1 or NIfTI-2 header size (348 / 540, either byte order) at the start of uncompressed ``data``."""
    if len(data) < 348:
        return False
    sizes = int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")
    return 348 in sizes or 540 in sizes


def read_nifti_bytes(
    data: bytes,
    *,
    name: str,
    max_slices: Optional[int] = None,
    max_voxels: Optional[int] = None,
    slices: Optional[SliceChooser] = None,
) -> Volume:
    """A :class:`Volume` (values as stored, after scaling) from uncompressed or gzipped NIfTI bytes.

    Gzipped data are decompressed whole (gzip has no random access); ``slices`` then still limits
    the conversion to the slices asked for (:func:`read_nifti_fileobj`).

    Raises:
        InvalidInput: ``INVALID_VOLUME`` for unreadable content; LimitExceeded over a limit.
    """
    if data.startswith(GZIP_MAGIC):
        data = gunzip(data, name=name, limit=None if max_voxels is None else max_voxels * 8 + (1 << 20))
    return read_nifti_fileobj(io.BytesIO(data), name=name, max_slices=max_slices, max_voxels=max_voxels, slices=slices)


def _open_image(fh: BinaryIO, name: str) -> Any:
    import nibabel as nib
    from nibabel.fileholders import FileHolder

    errors = []
    for cls in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            fh.seek(0)
            holder = FileHolder(fileobj=fh)
            return cls.from_file_map({"header": holder, "image": holder}, mmap=False, keep_file_open=False)
        except Exception as exc:  # noqa: BLE001 - nibabel raises many types on bad headers
            errors.append(f"{cls.__name__}: {exc}")
    raise InvalidInput(f"{name}: not a NIfTI-1/NIfTI-2 file ({'; '.join(errors)})", code=ErrorCode.INVALID_VOLUME)


def read_nifti_fileobj(
    fh: BinaryIO,
    *,
    name: str,
    max_slices: Optional[int] = None,
    max_voxels: Optional[int] = None,
    slices: Optional[SliceChooser] = None,
) -> Volume:
    """A :class:`Volume` from an uncompressed NIfTI in a seekable binary file (an upload, an open file).

    The header is read first; the voxel data are read from ``fh`` after the limits are checked.

    Args:
        fh: the file, positioned anywhere (it is read from its start); left open.
        name: for messages.
        max_slices, max_voxels: limits (413), checked before any voxel is read.
        slices: called with the (Z, Y, X) shape and LPS affine once the header is read; returns the slice indices
            needed (None: all). Only those slices' bytes are read from ``fh`` and converted (a slice
            of NIfTI axis k is one contiguous block of the file); the others are zero and
            ``Volume.decoded`` lists the ones read. Indices outside the volume are ignored.

    Raises:
        InvalidInput: ``INVALID_VOLUME`` for unreadable content; LimitExceeded over a limit.
    """
    image = _open_image(fh, name)
    stored = tuple(int(v) for v in image.header.get_data_shape())
    shape = stored
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
    zooms = [float(v) for v in image.header.get_zooms()[:3]] + [1.0] * (3 - len(image.header.get_zooms()[:3]))
    if not all(math.isfinite(v) and v > 0 for v in zooms):
        raise InvalidInput(
            f"{name}: NIfTI voxel sizes (pixdim) must be positive, got {zooms}", code=ErrorCode.INVALID_VOLUME
        )
    affine = np.asarray(image.affine, np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        affine = np.diag([zooms[0], zooms[1], zooms[2], 1.0])
    affine = geometry.ras_to_lps(affine)
    depth = shape[2]
    wanted = None if slices is None else slices((depth, shape[1], shape[0]), affine)
    decoded = None
    try:
        if wanted is None:
            voxels = np.asanyarray(image.dataobj)  # scl_slope / scl_inter applied by nibabel
            _check_dtype(voxels, name)
            array = np.ascontiguousarray(voxels.reshape(shape).transpose(2, 1, 0))
        else:
            decoded = np.unique([int(z) for z in wanted if 0 <= int(z) < depth]).astype(np.int64)
            array = None
            for z in decoded:
                # (i, j) of slice k, scaled; the proxy reads just that block of the file
                index = (slice(None), slice(None)) + ((int(z),) if len(stored) >= 3 else ())
                index += (0,) * (len(stored) - len(index))
                plane = np.asanyarray(image.dataobj[index])
                if array is None:
                    _check_dtype(plane, name)
                    array = np.zeros((depth, shape[1], shape[0]), plane.dtype)  # untouched pages: no memory
                array[z] = plane.T
            if array is None:
                array = np.zeros((depth, shape[1], shape[0]), image.get_data_dtype())
    except InvalidInput:
        raise
    except Exception as exc:  # noqa: BLE001
        raise InvalidInput(f"{name}: NIfTI voxel data cannot be read ({exc})", code=ErrorCode.INVALID_VOLUME) from None
    return Volume(
        array=array,
        affine=affine,
        source="nifti",
        header=image.header,
        decoded=decoded,
    )


def _check_dtype(voxels: np.ndarray, name: str) -> None:
    if voxels.dtype.kind not in "biuf":
        raise InvalidInput(f"{name}: NIfTI data type {voxels.dtype} is not supported", code=ErrorCode.INVALID_VOLUME)


def read_nifti_file(
    path: str | os.PathLike,
    *,
    max_slices: Optional[int] = None,
    max_voxels: Optional[int] = None,
    slices: Optional[SliceChooser] = None,
) -> Volume:
    """A NIfTI file (``.nii`` read from the file as needed, ``.nii.gz`` decompressed whole).

    Options as :func:`read_nifti_fileobj` (with ``slices``, an uncompressed file is read only where
    those slices lie).
    """
    p = Path(path)
    limits = {"max_slices": max_slices, "max_voxels": max_voxels, "slices": slices}
    try:
        with open(p, "rb") as fh:
            if fh.read(len(GZIP_MAGIC)) == GZIP_MAGIC:
                fh.seek(0)
                return read_nifti_bytes(fh.read(), name=str(p), **limits)
            return read_nifti_fileobj(fh, name=str(p), **limits)
    except OSError as exc:
        raise InvalidInput(f"{p}: cannot be read ({exc})", code=ErrorCode.INVALID_VOLUME) from None
