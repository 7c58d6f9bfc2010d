"""Read a volume upload (NIfTI ``.nii``/``.nii.gz``, NRRD ``.nrrd`` or NumPy ``.npy``) with the core readers.

Formats are told apart by their first bytes (:func:`msdn_core.readers.sniff`), not by file names. A
``.npy`` holds a (Z, Y, X) or (Y, X) array and needs a ``spacing`` field "sz,sy,sx" (mm); NIfTI and
NRRD carry their own geometry. Shapes and sizes are checked against the limits before the data are
decompressed or loaded.
"""

from __future__ import annotations

import io
import json
import math
from typing import BinaryIO, Optional

import numpy as np

from msdn_core.errors import ErrorCode
from msdn_core.readers import decompress, sniff
from msdn_core.readers.nifti import SliceChooser, read_nifti_bytes, read_nifti_fileobj
from msdn_core.readers.npy import read_npy_array, read_npy_bytes
from msdn_core.readers.nrrd import read_nrrd_bytes
from msdn_core.volume import Volume
from service.errors import InvalidInput, InvalidVolume
from service.settings import Settings


def parse_spacing(text: Optional[str]) -> Optional[tuple[float, float, float]]:
    """Parse a ``spacing`` field: "sz,sy,sx" or a JSON list of 3 positive numbers (mm)."""
    if text is None or not text.strip():
        return None
    raw = text.strip()
    try:
        values = json.loads(raw) if raw.startswith("[") else [float(v) for v in raw.replace(" ", ",").split(",") if v]
        values = [float(v) for v in values]
    except (ValueError, TypeError, json.JSONDecodeError):
        raise InvalidInput(f"spacing must be 'sz,sy,sx' in mm, got {text!r}", code=ErrorCode.INVALID_SPACING) from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise InvalidInput(
            f"spacing must be 3 positive numbers 'sz,sy,sx' (mm), got {text!r}", code=ErrorCode.INVALID_SPACING
        )
    return (values[0], values[1], values[2])


def read_array_file(fh: BinaryIO, *, name: str, settings: Settings) -> Volume | np.ndarray:
    """A NIfTI / NRRD upload as a :class:`Volume`, a ``.npy`` as its (Z, Y, X) array (no geometry).

    Raises:
        InvalidVolume: unknown format; the core readers' errors for unreadable content or limits.
    """
    limits = {"max_slices": settings.max_slices, "max_voxels": settings.max_voxels}
    data = decompress(fh.read(), name=name, max_voxels=settings.max_voxels)
    kind = sniff(data)
    if kind == "npy":
        return read_npy_array(data, name=name, **limits)
    if kind == "nifti":
        return read_nifti_bytes(data, name=name, **limits)
    if kind == "nrrd":
        return read_nrrd_bytes(data, name=name, **limits)
    if kind == "dicom":
        raise InvalidVolume(f"{name}: is a DICOM file; send DICOM images in the 'dicom' field")
    raise InvalidVolume(f"{name}: not a NIfTI (.nii, .nii.gz), NRRD (.nrrd) or NumPy (.npy) file")


#: Bytes read to tell the format of an upload (NIfTI-2's header is 540 bytes).
HEAD_BYTES = 544


def read_volume(
    fh: BinaryIO,
    *,
    name: str,
    spacing: Optional[str],
    settings: Settings,
    slices: Optional[SliceChooser] = None,
) -> Volume:
    """A :class:`Volume` from a NIfTI, NRRD or .npy upload: integer voxels keep their stored type (CT's
    int16: half the memory of float32, as the DICOM reader's), others become float32.

    An uncompressed NIfTI is read from ``fh`` itself (header first, then the voxel data, never the
    whole file as bytes); with ``slices`` only those slices are read (box mode: the slices its boxes
    touch; ``Volume.decoded`` lists them, the others are zero). A ``.nii.gz`` is decompressed whole
    (gzip has no random access) and then converted only where ``slices`` asks. NRRD and .npy are
    read whole.

    Args:
        fh: the file (seekable).
        name: its name, for messages.
        spacing: the ``spacing`` field (required for .npy, refused for NIfTI and NRRD, which have their own).
        settings: limits.
        slices: called with the (Z, Y, X) shape; the slices needed (None: all). NIfTI only.
    """
    given = parse_spacing(spacing)
    limits = {"max_slices": settings.max_slices, "max_voxels": settings.max_voxels}
    head = fh.read(HEAD_BYTES)
    fh.seek(0)
    if sniff(head) == "nifti":
        image = read_nifti_fileobj(fh, name=name, slices=slices, **limits)
    else:
        data = decompress(fh.read(), name=name, max_voxels=settings.max_voxels)
        kind = sniff(data)
        if kind == "npy":
            if given is None:
                raise InvalidInput(
                    f"{name}: a .npy volume needs the 'spacing' field 'sz,sy,sx' in mm",
                    code=ErrorCode.SPACING_REQUIRED,
                )
            image = read_npy_bytes(data, name=name, spacing=given, **limits)
        elif kind == "nifti":
            image = read_nifti_bytes(data, name=name, slices=slices, **limits)
        else:
            image = read_array_file(io.BytesIO(data), name=name, settings=settings)  # type: ignore[assignment]
    if given is not None and image.source != "npy":
        raise InvalidInput(
            f"{name}: {image.source.upper()} carries its own voxel size; leave out the 'spacing' field",
            code=ErrorCode.INVALID_SPACING,
        )
    image.array = _model_dtype(image.array, name=name, rows=image.decoded)
    return image


def _model_dtype(array: np.ndarray, *, name: str, rows: Optional[np.ndarray]) -> np.ndarray:
    """``array`` as the model path takes it: integers as stored (booleans as uint8), floats as float32
    checked finite; only ``rows`` (slice indices) hold values when given (a partial read)."""
    if array.dtype.kind in "iu":
        return np.ascontiguousarray(array)
    if array.dtype.kind == "b":
        return np.ascontiguousarray(array, dtype=np.uint8)
    out = np.ascontiguousarray(array, dtype=np.float32)
    if not np.all(np.isfinite(out if rows is None else out[np.asarray(rows, np.int64)])):
        raise InvalidVolume(f"{name}: the volume contains NaN or infinite values")
    return out
