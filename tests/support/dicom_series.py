"""Synthetic CT series as real DICOM Part 10 files (pydicom), for tests and benchmarks.

``ct_series(hu)`` turns a (Z, Y, X) array of Hounsfield units into single-frame CT Image Storage
datasets with consistent geometry (ImagePositionPatient along the normal of
ImageOrientationPatient), stored as uint16 with RescaleIntercept -1024 (and a chosen slope), and
identifying patient attributes so tests can check they never reach the logs.
"""

from __future__ import annotations

import io
import zipfile
from typing import Optional, Sequence

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

PATIENT_NAME = "Testpatient^Secretname"
PATIENT_ID = "PID-7f3a-SECRET"
PATIENT_BIRTH_DATE = "19421122"


def ct_series(
    hu: np.ndarray,
    *,
    spacing: Sequence[float] = (2.5, 0.75, 0.75),
    origin: Sequence[float] = (-120.0, -110.0, 40.0),
    orientation: Sequence[float] = (1, 0, 0, 0, 1, 0),
    slope: float = 1.0,
    intercept: float = -1024.0,
    series_uid: Optional[str] = None,
    study_uid: Optional[str] = None,
    modality: str = "CT",
    transfer_syntax: str = ExplicitVRLittleEndian,
) -> list[Dataset]:
    """Single-frame datasets of a (Z, Y, X) HU volume, slice z at origin + z * sz * normal.

    Stored value = round((HU - intercept) / slope) as uint16 (so HU must be >= intercept).
    """
    hu = np.asarray(hu, np.float64)
    if hu.ndim != 3:
        raise ValueError(f"hu must be (Z, Y, X), got {hu.shape}")
    stored = np.round((hu - intercept) / slope)
    if stored.min() < 0 or stored.max() > 65535:
        raise ValueError("HU values do not fit uint16 storage with this slope/intercept")
    stored = stored.astype(np.uint16)
    sz, sy, sx = spacing
    row, col = np.asarray(orientation[:3], float), np.asarray(orientation[3:], float)
    normal = np.cross(row, col)
    series_uid = series_uid or generate_uid()
    study_uid = study_uid or generate_uid()
    frame_uid = generate_uid()
    out = []
    for z in range(hu.shape[0]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.FrameOfReferenceUID = frame_uid
        ds.PatientName = PATIENT_NAME
        ds.PatientID = PATIENT_ID
        ds.PatientBirthDate = PATIENT_BIRTH_DATE
        ds.PatientSex = "O"
        ds.StudyDate = "20240101"
        ds.StudyTime = "120000"
        ds.StudyID = "1"
        ds.AccessionNumber = "ACC1"
        ds.ReferringPhysicianName = ""
        ds.Modality = modality
        ds.Manufacturer = "msdn-tests"
        ds.SeriesNumber = 1
        ds.InstanceNumber = z + 1
        ds.SeriesDescription = "synthetic"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [float(v) for v in np.asarray(origin, float) + z * sz * normal]
        ds.ImageOrientationPatient = [float(v) for v in orientation]
        ds.PixelSpacing = [float(sy), float(sx)]
        ds.SliceThickness = float(sz)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = int(hu.shape[1]), int(hu.shape[2])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleSlope = slope
        ds.RescaleIntercept = intercept
        ds.RescaleType = "HU"
        ds.KVP = 120
        ds.PixelData = stored[z].tobytes()
        if transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax)
        out.append(ds)
    return out


def to_bytes(ds: Dataset) -> bytes:
    """A dataset as a DICOM Part 10 file."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def zip_bytes(files: dict[str, bytes]) -> bytes:
    """A zip of named byte strings."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def series_files(datasets: Sequence[Dataset], prefix: str = "slice") -> list[tuple[str, bytes]]:
    """(name, Part 10 bytes) of each dataset, for multipart uploads."""
    return [(f"{prefix}{i:03d}.dcm", to_bytes(ds)) for i, ds in enumerate(datasets)]


def phantom(shape: Sequence[int] = (6, 48, 64), *, seed: int = 0) -> np.ndarray:
    """A (Z, Y, X) HU volume: air-ish background, a soft-tissue body, two bright blobs (> 300 HU)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")
    vol = np.full(shape, -900.0)
    body = ((y - shape[1] / 2) / (shape[1] * 0.45)) ** 2 + ((x - shape[2] / 2) / (shape[2] * 0.45)) ** 2 < 1
    vol[body] = 40.0
    blob1 = (y - shape[1] * 0.4) ** 2 + (x - shape[2] * 0.35) ** 2 < (min(shape[1:]) * 0.12) ** 2
    blob2 = (y - shape[1] * 0.6) ** 2 + (x - shape[2] * 0.7) ** 2 < (min(shape[1:]) * 0.08) ** 2
    vol[blob1 & (z >= 1)] = 400.0
    vol[blob2 & (z <= shape[0] - 2)] = 700.0
    vol += rng.integers(-20, 21, size=shape)
    return vol
