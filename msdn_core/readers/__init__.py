"""The readers: every file format into the one :class:`msdn_core.volume.Volume`.

* DICOM series: :mod:`msdn_core.readers.dicom` (``read_series``, ``read_dicom_folder``, ``parse_dicom``);
* NIfTI: :mod:`msdn_core.readers.nifti`; NRRD: :mod:`msdn_core.readers.nrrd`; ``.npy``: :mod:`msdn_core.readers.npy`.

:func:`sniff` tells formats apart by their first bytes (never by file name); :func:`read_path` reads
a path for training (a folder is one DICOM series; ``.nii``/``.nii.gz``/``.nrrd`` by content). All
limits and tolerances are keyword-only options; errors are :class:`msdn_core.errors.MsdnError`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from msdn_core.errors import ErrorCode, InvalidInput
from msdn_core.readers._limits import gunzip
from msdn_core.readers.dicom import read_dicom_folder
from msdn_core.readers.nifti import GZIP_MAGIC, looks_like_nifti, read_nifti_bytes
from msdn_core.readers.npy import NPY_MAGIC
from msdn_core.readers.nrrd import NRRD_MAGIC, read_nrrd_bytes
from msdn_core.volume import Volume

DICOM_MAGIC_OFFSET = 128


def sniff(data: bytes) -> str:
    """``"dicom"``, ``"nifti"``, ``"nrrd"``, ``"npy"``, ``"gzip"`` or ``""`` (unknown) from the first bytes."""
    if data[DICOM_MAGIC_OFFSET : DICOM_MAGIC_OFFSET + 4] == b"DICM":
        return "dicom"
    if data.startswith(GZIP_MAGIC):
        return "gzip"
    if data.startswith(NPY_MAGIC):
        return "npy"
    if data.startswith(NRRD_MAGIC):
        return "nrrd"
    if looks_like_nifti(data):
        return "nifti"
    return ""


def decompress(data: bytes, *, name: str, max_voxels: int | None = None) -> bytes:
    """``data`` gunzipped when it is gzip (at most ``max_voxels * 8`` bytes plus 1 MiB), else as is."""
    if sniff(data) != "gzip":
        return data
    return gunzip(data, name=name, limit=None if max_voxels is None else max_voxels * 8 + (1 << 20))


def read_path(path: str | os.PathLike, **options: Any) -> Volume:
    """A volume from a path: a folder holding one DICOM series, or a NIfTI / NRRD file.

    ``options`` go to the reader (DICOM: :func:`msdn_core.readers.dicom.read_series`'s keywords;
    NIfTI/NRRD: ``max_slices``, ``max_voxels``).
    """
    p = Path(path)
    if p.is_dir():
        return read_dicom_folder(p, **options)
    if not p.is_file():
        raise InvalidInput(f"file not found: {p}", code=ErrorCode.NO_INPUT)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"{p}: cannot be read ({exc})", code=ErrorCode.INVALID_VOLUME) from None
    limits = {k: v for k, v in options.items() if k in ("max_slices", "max_voxels")}
    data = decompress(data, name=str(p), max_voxels=limits.get("max_voxels"))
    kind = sniff(data)
    if kind == "nifti":
        return read_nifti_bytes(data, name=str(p), **limits)
    if kind == "nrrd":
        return read_nrrd_bytes(data, name=str(p), **limits)
    raise InvalidInput(
        f"{p}: unsupported volume format (use .nii, .nii.gz, .nrrd or a folder holding one DICOM series)",
        code=ErrorCode.INVALID_VOLUME,
    )
