"""Reading and writing image volumes (NIfTI files, folders holding one DICOM series).

In memory a volume is a numpy array (Z, Y, X) of axial slices, its voxel spacing (sz, sy, sx) in mm and
a 4x4 affine mapping (x, y, z) voxel indices (NIfTI order: column, row, slice) to world coordinates in
NIfTI's RAS convention, whatever the file format (DICOM's LPS patient coordinates are converted), so
a DICOM image and a NIfTI mask of the same grid have the same affine.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

#: flips x and y: DICOM patient coordinates (LPS) <-> NIfTI world coordinates (RAS)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class VolumeError(ValueError):
    """A volume file cannot be read or is not what it should be (the message says why)."""


@dataclass
class Volume:
    """An image or label volume.

    Attributes:
        array: (Z, Y, X) voxel values (HU for CT images, integer labels for masks).
        spacing: (sz, sy, sx) voxel size in mm.
        affine: 4x4 NIfTI affine of the (X, Y, Z)-ordered data.
    """

    array: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """(Z, Y, X)."""
        return tuple(self.array.shape)  # type: ignore[return-value]


def is_nifti(path: str | os.PathLike) -> bool:
    """True for .nii / .nii.gz names."""
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def read_nifti(path: str | os.PathLike, *, dtype=np.float32) -> Volume:
    """Read a 3D NIfTI file into (Z, Y, X)."""
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as exc:  # nibabel raises several types for damaged files
        raise VolumeError(f"cannot read NIfTI {path}: {exc}") from exc
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise VolumeError(f"{path}: expected a 3D volume, got shape {data.shape}")
    zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    return Volume(
        array=np.ascontiguousarray(data.transpose(2, 1, 0)).astype(dtype, copy=False),
        spacing=(zooms[2], zooms[1], zooms[0]),
        affine=np.asarray(img.affine, dtype=np.float64),
    )


def write_nifti(path: str | os.PathLike, array: np.ndarray, *, spacing=None, affine=None) -> Path:
    """Write a (Z, Y, X) array as NIfTI; the affine defaults to diag(sx, sy, sz)."""
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


def read_dicom_series(folder: str | os.PathLike) -> Volume:
    """Read the single DICOM series in ``folder``: slices sorted along the slice normal, HU applied."""
    import pydicom

    files = sorted(p for p in Path(folder).iterdir() if p.is_file())
    datasets = []
    for p in files:
        try:
            ds = pydicom.dcmread(p)
        except Exception:
            continue
        if "PixelData" in ds:
            datasets.append(ds)
    if not datasets:
        raise VolumeError(f"{folder}: no DICOM images found")
    series = {ds.SeriesInstanceUID for ds in datasets}
    if len(series) > 1:
        raise VolumeError(f"{folder}: holds {len(series)} series, expected one")
    iop = np.array(datasets[0].ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    datasets.sort(key=lambda ds: float(np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float))))
    pos = np.array([np.dot(normal, np.array(ds.ImagePositionPatient, dtype=float)) for ds in datasets])
    sz = float(np.median(np.diff(pos))) if len(pos) > 1 else float(getattr(datasets[0], "SliceThickness", 1.0))
    if len(pos) > 1 and (np.any(np.diff(pos) <= 0) or np.ptp(np.diff(pos)) > 0.01 * abs(sz) + 1e-3):
        raise VolumeError(f"{folder}: slice positions are duplicated or irregularly spaced")
    slices = [
        ds.pixel_array.astype(np.float32) * float(getattr(ds, "RescaleSlope", 1))
        + float(getattr(ds, "RescaleIntercept", 0))
        for ds in datasets
    ]
    sy, sx = (float(v) for v in datasets[0].PixelSpacing)
    # Affine of (col, row, slice) indices -> patient LPS coordinates, then to NIfTI's RAS.
    origin = np.array(datasets[0].ImagePositionPatient, dtype=float)
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * sx
    affine[:3, 1] = iop[3:] * sy
    affine[:3, 2] = normal * sz
    affine[:3, 3] = origin
    affine = LPS_TO_RAS @ affine
    return Volume(array=np.stack(slices), spacing=(sz, sy, sx), affine=affine)


def read_volume(path: str | os.PathLike, *, dtype=np.float32) -> Volume:
    """Read a NIfTI file or a folder holding one DICOM series."""
    path = Path(path)
    if path.is_dir():
        vol = read_dicom_series(path)
        vol.array = vol.array.astype(dtype, copy=False)
        return vol
    if not path.is_file():
        raise VolumeError(f"file not found: {path}")
    if is_nifti(path):
        return read_nifti(path, dtype=dtype)
    raise VolumeError(f"{path}: unsupported volume format (use .nii, .nii.gz or a DICOM folder)")
