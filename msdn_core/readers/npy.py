"""NumPy ``.npy`` arrays: a (Z, Y, X) or (Y, X) numeric array with no geometry of its own.

The header is checked (shape, dtype, limits) before the data are loaded; pickles are never loaded.
Given a ``spacing`` (sz, sy, sx) mm, :func:`read_npy_bytes` places the array on the grid a NIfTI with
the diagonal affine diag(sx, sy, sz) would have (RAS axis-aligned, origin 0).
"""

from __future__ import annotations

import io
from typing import Optional, Sequence

import numpy as np

from msdn_core import geometry
from msdn_core.errors import ErrorCode, InvalidInput
from msdn_core.readers._limits import check_shape
from msdn_core.volume import Volume

NPY_MAGIC = b"\x93NUMPY"


def read_npy_array(
    data: bytes, *, name: str, max_slices: Optional[int] = None, max_voxels: Optional[int] = None
) -> np.ndarray:
    """The (Z, Y, X) array of ``.npy`` bytes (a (Y, X) array becomes one slice)."""
    fh = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, SyntaxError, EOFError) as exc:
        raise InvalidInput(f"{name}: not a valid .npy file ({exc})", code=ErrorCode.INVALID_VOLUME) from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise InvalidInput(f"{name}: .npy dtype {dtype} is not numeric", code=ErrorCode.INVALID_VOLUME)
    if len(shape) not in (2, 3):
        raise InvalidInput(
            f"{name}: .npy must hold a (Z, Y, X) or (Y, X) array, got shape {list(shape)}",
            code=ErrorCode.INVALID_VOLUME,
        )
    check_shape(tuple(shape), name=name, max_slices=max_slices, max_voxels=max_voxels)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise InvalidInput(f"{name}: .npy data cannot be read ({exc})", code=ErrorCode.INVALID_VOLUME) from None
    if array.ndim == 2:
        array = array[None]
    return np.ascontiguousarray(array)


def npy_affine(spacing: Sequence[float]) -> np.ndarray:
    """LPS affine of a geometry-less array of (sz, sy, sx) spacing: RAS diag(sx, sy, sz), origin 0."""
    return geometry.ras_to_lps(geometry.axis_affine(spacing))


def read_npy_bytes(
    data: bytes,
    *,
    name: str,
    spacing: Sequence[float],
    max_slices: Optional[int] = None,
    max_voxels: Optional[int] = None,
) -> Volume:
    """A :class:`Volume` from ``.npy`` bytes and its (sz, sy, sx) spacing in mm."""
    array = read_npy_array(data, name=name, max_slices=max_slices, max_voxels=max_voxels)
    return Volume(array=array, affine=npy_affine(spacing), source="npy")
