"""Size limits shared by the readers (checked before pixel data are decoded or decompressed)."""

from __future__ import annotations

import gzip
import io
import zlib
from typing import Optional, Sequence

import numpy as np

from msdn_core.errors import ErrorCode, InvalidInput, LimitExceeded


def check_shape(shape_zyx: Sequence[int], *, name: str, max_slices: Optional[int], max_voxels: Optional[int]) -> None:
    """Refuse an empty volume (``INVALID_VOLUME``) or one over ``max_slices`` / ``max_voxels`` (413)."""
    shape = tuple(int(v) for v in shape_zyx)
    z = shape[0] if len(shape) == 3 else 1
    if max_slices is not None and z > max_slices:
        raise LimitExceeded(
            f"{name}: {z} slices is over the limit of {max_slices} slices", code=ErrorCode.TOO_MANY_SLICES
        )
    voxels = int(np.prod(shape, dtype=np.int64))
    if max_voxels is not None and voxels > max_voxels:
        raise LimitExceeded(
            f"{name}: {voxels} voxels is over the limit of {max_voxels} voxels", code=ErrorCode.TOO_MANY_VOXELS
        )
    if voxels == 0:
        raise InvalidInput(f"{name}: the volume is empty (shape {list(shape)})", code=ErrorCode.INVALID_VOLUME)


def gunzip(data: bytes, *, name: str, limit: Optional[int]) -> bytes:
    """Decompress gzip ``data``, refusing output over ``limit`` bytes (``TOO_MANY_VOXELS``)."""
    out = io.BytesIO()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
            while chunk := fh.read(1 << 20):
                out.write(chunk)
                if limit is not None and out.tell() > limit:
                    raise LimitExceeded(f"{name}: decompresses to over {limit} bytes", code=ErrorCode.TOO_MANY_VOXELS)
    except (OSError, EOFError, zlib.error) as exc:
        raise InvalidInput(f"{name}: corrupt gzip data ({exc})", code=ErrorCode.INVALID_VOLUME) from None
    return out.getvalue()
