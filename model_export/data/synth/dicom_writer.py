"""Write a (Z, Y, X) HU volume as a CT DICOM series (one file per axial slice).

The objects are CT Image Storage instances with the modules a PACS, pydicom and highdicom rely on:
patient / study / series / frame of reference / equipment / image plane / image pixel / CT image /
SOP common. Pixels are stored as signed 16-bit integers ``HU - RescaleIntercept`` with
``RescaleIntercept = -1024`` and ``RescaleSlope = 1``; files are Explicit VR Little Endian with a
file meta header. UIDs are derived from a key string, so the same key gives the same UIDs (the
generator is deterministic). Patient identity is obviously synthetic (``SYNTHETIC^<ID>``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

RESCALE_INTERCEPT = -1024
CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
#: fixed date/time: synthetic data carries no acquisition date
STUDY_DATE, STUDY_TIME = "20000101", "120000"


def _uid(key: str) -> str:
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[key])


def write_ct_series(
    folder: str | os.PathLike,
    hu: np.ndarray,
    *,
    spacing: Sequence[float],
    origin: Sequence[float] = (0.0, 0.0, 0.0),
    key: str,
    patient_id: str,
    description: str = "msdn synthetic CT",
    window: tuple[float, float] = (-600.0, 1500.0),
    body_part: str = "CHEST",
) -> list[Path]:
    """Write ``hu`` (Z, Y, X) as one CT series in ``folder``; returns the file paths in slice order.

    Args:
        folder: created if missing; files are named ``IM0001.dcm`` ... in ascending z.
        hu: (Z, Y, X) integer-valued HU in [-1024, 3071 + ...]; values are rounded and clipped to int16.
        spacing: (sz, sy, sx) mm; slices are contiguous (SpacingBetweenSlices = SliceThickness = sz).
        origin: (x, y, z) LPS position of the first voxel of slice 0 (ImagePositionPatient).
        key: seeds the Study / Series / Frame of Reference / SOP Instance UIDs.
        patient_id: synthetic identifier, also used as PatientName ``SYNTHETIC^<patient_id>``.
        description: SeriesDescription / StudyDescription.
        window: (center, width) default display window.
        body_part: BodyPartExamined.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian

    if hu.ndim != 3:
        raise ValueError(f"hu must be (Z, Y, X), got shape {hu.shape}")
    sz, sy, sx = (float(v) for v in spacing)
    stored = np.clip(np.rint(hu.astype(np.float64)) - RESCALE_INTERCEPT, -32768, 32767).astype(np.int16)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid, for_uid = _uid(key + "/study"), _uid(key + "/series"), _uid(key + "/for")

    base = Dataset()
    base.SpecificCharacterSet = "ISO_IR 100"
    base.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
    base.SOPClassUID = CT_IMAGE_STORAGE
    base.StudyDate = base.SeriesDate = base.ContentDate = STUDY_DATE
    base.StudyTime = base.SeriesTime = base.ContentTime = STUDY_TIME
    base.AccessionNumber = ""
    base.Modality = "CT"
    base.Manufacturer = "msdn synth"
    base.ManufacturerModelName = "synthetic"
    base.ReferringPhysicianName = ""
    base.StudyDescription = description
    base.SeriesDescription = description
    base.PatientName = f"SYNTHETIC^{patient_id}"
    base.PatientID = patient_id
    base.PatientBirthDate = ""
    base.PatientSex = "O"
    base.PatientIdentityRemoved = "YES"
    base.BodyPartExamined = body_part
    base.SliceThickness = f"{sz:.6g}"
    base.SpacingBetweenSlices = f"{sz:.6g}"
    base.KVP = "120"
    base.PatientPosition = "HFS"
    base.StudyInstanceUID = study_uid
    base.SeriesInstanceUID = series_uid
    base.StudyID = "1"
    base.SeriesNumber = 1
    base.AcquisitionNumber = 1
    base.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    base.FrameOfReferenceUID = for_uid
    base.PositionReferenceIndicator = ""
    base.SamplesPerPixel = 1
    base.PhotometricInterpretation = "MONOCHROME2"
    base.Rows, base.Columns = int(hu.shape[1]), int(hu.shape[2])
    base.PixelSpacing = [f"{sy:.6g}", f"{sx:.6g}"]
    base.BitsAllocated = 16
    base.BitsStored = 16
    base.HighBit = 15
    base.PixelRepresentation = 1
    base.WindowCenter = f"{window[0]:.6g}"
    base.WindowWidth = f"{window[1]:.6g}"
    base.RescaleIntercept = str(RESCALE_INTERCEPT)
    base.RescaleSlope = "1"
    base.RescaleType = "HU"

    paths = []
    for k in range(hu.shape[0]):
        ds = Dataset()
        ds.update(base)
        sop_uid = _uid(f"{key}/sop/{k}")
        ds.SOPInstanceUID = sop_uid
        ds.InstanceNumber = k + 1
        z = float(origin[2]) + k * sz
        ds.ImagePositionPatient = [f"{float(origin[0]):.6g}", f"{float(origin[1]):.6g}", f"{z:.6g}"]
        ds.SliceLocation = f"{z:.6g}"
        ds.PixelData = stored[k].tobytes()
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds.file_meta = meta
        path = folder / f"IM{k + 1:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
