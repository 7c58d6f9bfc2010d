"""Training's volume I/O: reading goes through the core readers, writing NIfTI stays here.

``read_volume`` reads a NIfTI/NRRD file or a folder holding one DICOM series with
:func:`msdn_core.readers.read_path` (the same reader and options the service uses, so a manifest may
point at compressed DICOM) and returns the one :class:`msdn_core.volume.Volume`: a (Z, Y, X) array
and an LPS affine (``Volume.affine_ras`` is NIfTI's form). Errors are :class:`msdn_core.errors.MsdnError`.
"""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np

from msdn_core.readers import read_path
from msdn_core.volume import Volume

__all__ = ["Volume", "is_nifti", "read_volume", "write_nifti"]


def is_nifti(path: str | os.PathLike) -> bool:
    """True for .nii / .nii.gz names."""
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def write_nifti(path: str | os.PathLike, array: np.ndarray, *, spacing=None, affine=None) -> Path:
    """Write a (Z, Y, X) array as NIfTI; ``affine`` is the RAS (NIfTI) affine, default diag(sx, sy, sz)."""
    if array.ndim != 3:
        raise ValueError(f"array must be (Z, Y, X), got shape {array.shape}")
    if affine is None:
        sz, sy, sx = spacing if spacing is not None else (1.0, 1.0, 1.0)
        affine = np.diag([sx, sy, sz, 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), np.asarray(affine, dtype=np.float64))
    img.header.set_xyzt_units("mm")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def read_volume(path: str | os.PathLike, *, dtype=np.float32) -> Volume:
    """A NIfTI/NRRD file or a DICOM series folder as a :class:`Volume` with its array cast to ``dtype``."""
    vol = read_path(path)
    vol.array = vol.array.astype(dtype, copy=False)
    return vol
