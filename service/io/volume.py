"""Read NIfTI (``.nii``, ``.nii.gz``) and NumPy (``.npy``) volumes.

NIfTI voxel axes (i, j, k) become the (Z, Y, X) = (k, j, i) array of the project convention; the
spacing comes from the header's zooms and the affine is kept for the answer. A ``.npy`` holds a
(Z, Y, X) or (Y, X) array and needs a ``spacing`` field "sz,sy,sx" (mm). Formats are told apart by
their first bytes, not by file names. Shapes and sizes are checked against the limits before the
data are decompressed or loaded.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO, Optional

import numpy as np

from service.errors import ErrorCode, InvalidInput, InvalidVolume, LimitExceeded
from service.image import ImageVolume, spacing_affine
from service.settings import Settings

GZIP_MAGIC = b"\x1f\x8b"
NPY_MAGIC = b"\x93NUMPY"
DICOM_MAGIC_OFFSET = 128


@dataclass
class ArrayFile:
    """A volume file's voxels and whatever geometry it carries."""

    array: np.ndarray  # (Z, Y, X), dtype as stored
    kind: str  # "nifti" | "npy"
    affine: Optional[np.ndarray] = None
    spacing: Optional[tuple[float, float, float]] = None
    header: Any = None


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


def _check_shape(shape: tuple[int, ...], name: str, settings: Settings) -> None:
    z = shape[0] if len(shape) == 3 else 1
    if z > settings.max_slices:
        raise LimitExceeded(
            f"{name}: {z} slices is over the limit of {settings.max_slices} (MSDN_MAX_SLICES)",
            code=ErrorCode.TOO_MANY_SLICES,
        )
    voxels = int(np.prod(shape, dtype=np.int64))
    if voxels > settings.max_voxels:
        raise LimitExceeded(
            f"{name}: {voxels} voxels is over the limit of {settings.max_voxels} (MSDN_MAX_VOXELS)",
            code=ErrorCode.TOO_MANY_VOXELS,
        )
    if voxels == 0:
        raise InvalidVolume(f"{name}: the volume is empty (shape {list(shape)})")


def _gunzip(data: bytes, name: str, limit: int) -> bytes:
    out = io.BytesIO()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as fh:
            while chunk := fh.read(1 << 20):
                out.write(chunk)
                if out.tell() > limit:
                    raise LimitExceeded(f"{name}: decompresses to over {limit} bytes", code=ErrorCode.TOO_MANY_VOXELS)
    except (OSError, EOFError, zlib.error) as exc:
        raise InvalidVolume(f"{name}: corrupt gzip data ({exc})") from None
    return out.getvalue()


def _read_npy(data: bytes, name: str, settings: Settings) -> ArrayFile:
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
        raise InvalidVolume(f"{name}: not a valid .npy file ({exc})") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise InvalidVolume(f"{name}: .npy dtype {dtype} is not numeric")
    if len(shape) not in (2, 3):
        raise InvalidVolume(f"{name}: .npy must hold a (Z, Y, X) or (Y, X) array, got shape {list(shape)}")
    _check_shape(tuple(shape), name, settings)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, EOFError, OSError) as exc:
        raise InvalidVolume(f"{name}: .npy data cannot be read ({exc})") from None
    if array.ndim == 2:
        array = array[None]
    return ArrayFile(np.ascontiguousarray(array), "npy")


def _read_nifti(data: bytes, name: str, settings: Settings) -> ArrayFile:
    import nibabel as nib

    image = None
    errors = []
    for cls in (nib.Nifti1Image, nib.Nifti2Image):
        try:
            image = cls.from_bytes(data)
            break
        except Exception as exc:  # noqa: BLE001 - nibabel raises many types on bad headers
            errors.append(f"{cls.__name__}: {exc}")
    if image is None:
        raise InvalidVolume(f"{name}: not a NIfTI-1/NIfTI-2 file ({'; '.join(errors)})")
    shape = tuple(int(v) for v in image.header.get_data_shape())
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) == 2:
        shape = shape + (1,)
    if len(shape) != 3:
        raise InvalidVolume(f"{name}: NIfTI must be 3D (or 2D, or 4D with one volume), got shape {list(shape)}")
    _check_shape(shape[::-1], name, settings)
    try:
        voxels = np.asanyarray(image.dataobj)  # scl_slope / scl_inter applied by nibabel
    except Exception as exc:  # noqa: BLE001
        raise InvalidVolume(f"{name}: NIfTI voxel data cannot be read ({exc})") from None
    if voxels.dtype.kind not in "biuf":
        raise InvalidVolume(f"{name}: NIfTI data type {voxels.dtype} is not supported")
    voxels = voxels.reshape(shape)
    zooms = [float(v) for v in image.header.get_zooms()[:3]] + [1.0] * (3 - len(image.header.get_zooms()[:3]))
    if not all(math.isfinite(v) and v > 0 for v in zooms):
        raise InvalidVolume(f"{name}: NIfTI voxel sizes (pixdim) must be positive, got {zooms}")
    affine = np.asarray(image.affine, np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        affine = spacing_affine((zooms[2], zooms[1], zooms[0]))
    array = np.ascontiguousarray(voxels.transpose(2, 1, 0))
    return ArrayFile(array, "nifti", affine=affine, spacing=(zooms[2], zooms[1], zooms[0]), header=image.header)


def read_array_file(fh: BinaryIO, *, name: str, settings: Settings) -> ArrayFile:
    """Read a NIfTI or .npy upload (see module docstring).

    Raises:
        InvalidVolume: unknown format or unreadable content; LimitExceeded: over a limit.
    """
    data = fh.read()
    if data.startswith(GZIP_MAGIC):
        data = _gunzip(data, name, settings.max_voxels * 8 + (1 << 20))
    if data.startswith(NPY_MAGIC):
        return _read_npy(data, name, settings)
    if len(data) >= 348:
        sizeof_hdr = int.from_bytes(data[:4], "little"), int.from_bytes(data[:4], "big")
        if 348 in sizeof_hdr or 540 in sizeof_hdr:
            return _read_nifti(data, name, settings)
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        raise InvalidVolume(f"{name}: is a DICOM file; send DICOM images in the 'dicom' field")
    raise InvalidVolume(f"{name}: not a NIfTI (.nii, .nii.gz) or NumPy (.npy) file")


def read_volume(fh: BinaryIO, *, name: str, spacing: Optional[str], settings: Settings) -> ImageVolume:
    """An ``ImageVolume`` from a NIfTI or .npy upload.

    Args:
        fh: the file.
        name: its name, for messages.
        spacing: the ``spacing`` field (required for .npy, refused for NIfTI, which has its own).
        settings: limits.
    """
    parsed = read_array_file(fh, name=name, settings=settings)
    given = parse_spacing(spacing)
    if parsed.kind == "nifti":
        if given is not None:
            raise InvalidInput(
                f"{name}: NIfTI carries its own voxel size; leave out the 'spacing' field",
                code=ErrorCode.INVALID_SPACING,
            )
        vox_spacing = parsed.spacing
        affine = parsed.affine
    else:
        if given is None:
            raise InvalidInput(
                f"{name}: a .npy volume needs the 'spacing' field 'sz,sy,sx' in mm", code=ErrorCode.SPACING_REQUIRED
            )
        vox_spacing = given
        affine = spacing_affine(given)
    array = parsed.array.astype(np.float32, copy=False)
    if not np.all(np.isfinite(array)):
        raise InvalidVolume(f"{name}: the volume contains NaN or infinite values")
    assert vox_spacing is not None and affine is not None
    return ImageVolume(
        array=np.ascontiguousarray(array, dtype=np.float32),
        spacing=vox_spacing,
        affine=affine,
        source=parsed.kind,
        nifti_header=parsed.header,
    )
