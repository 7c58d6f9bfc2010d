"""The NRRD reader (pynrrd): 3D Slicer's default volume and label-map format, into a :class:`Volume`.

The NRRD's ``space`` (``left-posterior-superior``, ``right-anterior-superior``,
``left-anterior-superior``, or their ``LPS``/``RAS``/``LAS`` short forms) and its ``space directions`` /
``space origin`` give the affine, converted to LPS. Without a space, ``spacings`` give an axis-aligned
grid. Data axes (i, j, k) become the (Z, Y, X) = (k, j, i) array. Only attached data (``.nrrd``) is read
from bytes; a 4D NRRD with a single-element non-spatial axis is squeezed.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Optional

import numpy as np

from msdn_core.errors import ErrorCode, InvalidInput
from msdn_core.readers._limits import check_shape
from msdn_core.volume import Volume

NRRD_MAGIC = b"NRRD000"
#: sign flips that take each NRRD space to LPS
_SPACES = {
    "left-posterior-superior": (1.0, 1.0, 1.0),
    "lps": (1.0, 1.0, 1.0),
    "right-anterior-superior": (-1.0, -1.0, 1.0),
    "ras": (-1.0, -1.0, 1.0),
    "left-anterior-superior": (1.0, -1.0, 1.0),
    "las": (1.0, -1.0, 1.0),
}


def _bad(name: str, why: str) -> InvalidInput:
    return InvalidInput(f"{name}: {why}", code=ErrorCode.INVALID_VOLUME)


def read_nrrd_bytes(
    data: bytes, *, name: str, max_slices: Optional[int] = None, max_voxels: Optional[int] = None
) -> Volume:
    """A :class:`Volume` from NRRD bytes (attached data).

    Raises:
        InvalidInput: ``INVALID_VOLUME`` for unreadable content or an unknown space; LimitExceeded.
    """
    import nrrd

    fh = io.BytesIO(data)
    try:
        header = nrrd.read_header(fh)
    except Exception as exc:  # noqa: BLE001 - pynrrd raises several types on bad headers
        raise _bad(name, f"not a NRRD file ({exc})") from None
    if "data file" in header or "datafile" in header:
        raise _bad(name, "NRRD with detached data (.nhdr) cannot be read from one upload; send a .nrrd")
    sizes = [int(v) for v in header.get("sizes", [])]
    directions = header.get("space directions")
    spatial = list(range(len(sizes)))
    if directions is not None:
        spatial = [i for i, d in enumerate(directions) if d is not None and not np.all(np.isnan(np.asarray(d, float)))]
    if len(spatial) != 3 or any(sizes[i] != 1 for i in range(len(sizes)) if i not in spatial):
        raise _bad(name, f"NRRD must hold one 3D volume, got sizes {sizes}")
    check_shape([sizes[i] for i in spatial][::-1], name=name, max_slices=max_slices, max_voxels=max_voxels)
    try:
        voxels = nrrd.read_data(header, fh, index_order="F")
    except Exception as exc:  # noqa: BLE001
        raise _bad(name, f"NRRD data cannot be read ({exc})") from None
    voxels = np.asarray(voxels).reshape([sizes[i] for i in spatial], order="A")
    if voxels.dtype.kind not in "biuf":
        raise _bad(name, f"NRRD data type {voxels.dtype} is not supported")
    affine = np.eye(4)
    if directions is not None:
        space = str(header.get("space", "left-posterior-superior")).lower()
        if space not in _SPACES:
            raise _bad(name, f"NRRD space {space!r} is not an anatomical 3D space (LPS, RAS or LAS)")
        flip = np.asarray(_SPACES[space])
        for col, i in enumerate(spatial):
            affine[:3, col] = flip * np.asarray(directions[i], np.float64)
        origin = header.get("space origin")
        if origin is not None:
            affine[:3, 3] = flip * np.asarray(origin, np.float64)
    else:
        spacings = header.get("spacings")
        if spacings is None:
            raise _bad(name, "NRRD has neither 'space directions' nor 'spacings'")
        for col, i in enumerate(spatial):
            affine[col, col] = float(spacings[i])
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise _bad(name, "NRRD space directions are not an invertible 3x3")
    return Volume(array=np.ascontiguousarray(voxels.transpose(2, 1, 0)), affine=affine, source="nrrd")


def read_nrrd_file(path: str | os.PathLike, **limits: Optional[int]) -> Volume:
    """:func:`read_nrrd_bytes` of a ``.nrrd`` file."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise _bad(str(p), f"cannot be read ({exc})") from None
    return read_nrrd_bytes(data, name=str(p), **limits)
