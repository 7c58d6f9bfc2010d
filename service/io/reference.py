"""Read the ``reference`` mask of a request: NIfTI, .npy or DICOM SEG, as (Z, Y, X) class labels.

``read_reference_file`` parses the upload; ``labels_from_seg`` and ``check_reference`` match it to the
input volume. NIfTI and .npy references hold integer labels 0..C in the same voxel grid as the input (after the
same axis handling as ``service.io.volume``). A DICOM SEG reference must reference the input series
(DICOM input only); its frames are matched to the input slices by source instance (or source frame
for a multi-frame input) with highdicom, and segment number k is class value k.
"""

from __future__ import annotations

from typing import BinaryIO

import numpy as np
from pydicom.dataset import Dataset

from service.errors import ErrorCode, InvalidInput, ReferenceMismatch
from service.image import ImageVolume
from service.io.dicom import parse_dicom
from service.io.volume import DICOM_MAGIC_OFFSET, read_array_file
from service.settings import Settings

SEG_SOP_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


def check_reference(labels: np.ndarray, *, name: str, image: ImageVolume, num_classes: int) -> np.ndarray:
    """``labels`` as (Z, Y, X) uint8 after checking shape and label range against ``image``."""
    if labels.shape != image.shape:
        raise ReferenceMismatch(
            f"{name}: reference shape (Z, Y, X) {list(labels.shape)} differs from the input's {list(image.shape)}"
        )
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or not np.all(labels == np.round(labels)):
            raise ReferenceMismatch(f"{name}: reference must hold integer class labels, found fractional values")
    elif labels.dtype.kind not in "biu":
        raise ReferenceMismatch(f"{name}: reference data type {labels.dtype} is not a label type")
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0 or high > num_classes:
        raise ReferenceMismatch(
            f"{name}: reference labels span {low}..{high}; this model's classes are 0..{num_classes} (0 = background)"
        )
    return labels.astype(np.uint8)


def labels_from_seg(ds: Dataset, *, name: str, image: ImageVolume) -> np.ndarray:
    """Class labels (Z, Y, X) of a DICOM SEG dataset, matched to the slices of the DICOM ``image``."""
    import highdicom as hd

    if str(ds.get("SOPClassUID", "")) != SEG_SOP_CLASS:
        raise ReferenceMismatch(
            f"{name}: a DICOM reference must be a Segmentation (SEG), got SOP class {ds.get('SOPClassUID')}"
        )
    series = image.series
    if series is None:
        raise ReferenceMismatch(f"{name}: a DICOM SEG reference needs DICOM input (it refers to source images)")
    try:
        seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
    except Exception as exc:  # noqa: BLE001 - highdicom raises many types on invalid SEGs
        raise InvalidInput(
            f"{name}: not a valid DICOM SEG ({type(exc).__name__}: {exc})", code=ErrorCode.INVALID_REFERENCE
        ) from None
    referenced = {str(s) for _, s, _ in seg.get_source_image_uids()}
    if series.series_instance_uid not in referenced:
        raise ReferenceMismatch(f"{name}: the SEG does not reference the input series {series.series_instance_uid}")
    try:
        if series.multiframe:
            labels = seg.get_pixels_by_source_frame(
                source_sop_instance_uid=series.sop_instance_uids[0],
                source_frame_numbers=list(series.frame_numbers or []),
                combine_segments=True,
                assert_missing_frames_are_empty=True,
            )
        else:
            labels = seg.get_pixels_by_source_instance(
                source_sop_instance_uids=series.sop_instance_uids,
                combine_segments=True,
                assert_missing_frames_are_empty=True,
            )
    except Exception as exc:  # noqa: BLE001
        raise ReferenceMismatch(f"{name}: SEG frames cannot be matched to the input slices ({exc})") from None
    return np.asarray(labels)


def read_reference_file(fh: BinaryIO, *, name: str, settings: Settings) -> np.ndarray | Dataset:
    """Parse a reference upload: a DICOM SEG dataset, or the (Z, Y, X) labels of a NIfTI / .npy file.

    The result goes to ``service.pipeline.segment_image(reference=...)``, which matches it to the input
    (``labels_from_seg`` and ``check_reference``).

    Raises:
        NotDicom / InvalidVolume / LimitExceeded: unreadable or too large file.
    """
    head = fh.read(DICOM_MAGIC_OFFSET + 4)
    fh.seek(0)
    if head[DICOM_MAGIC_OFFSET:] == b"DICM":
        return parse_dicom(fh, name=name)
    return read_array_file(fh, name=name, settings=settings).array
