"""A small, real segmentation pipeline for the PACS tests: threshold a series, write a DICOM SEG.

Stands in for ``service.pipeline`` (not part of this branch) with the same contract the PACS router
expects: a list of pydicom Datasets of one series in, a DICOM SEG (highdicom) out.
"""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid


def sort_by_position(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Slices ordered along the slice normal (ImagePositionPatient . normal)."""
    first = datasets[0]
    iop = np.asarray(first.ImageOrientationPatient, dtype=float)
    normal = np.cross(iop[:3], iop[3:])
    return sorted(datasets, key=lambda ds: float(np.dot(normal, np.asarray(ds.ImagePositionPatient, dtype=float))))


def stored_values(ds: Dataset) -> np.ndarray:
    """Pixel values in stored units (HU for CT): pixel * slope + intercept."""
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    return ds.pixel_array.astype(np.float64) * slope + intercept


def threshold_mask(datasets: Sequence[Dataset], threshold: float | None = None) -> np.ndarray:
    """(Z, Y, X) bool mask, value > threshold (default: the mean of the whole series)."""
    volume = np.stack([stored_values(ds) for ds in datasets])
    level = float(volume.mean()) if threshold is None else threshold
    return volume > level


def threshold_pipeline(datasets: Sequence[Dataset], *, threshold: float | None = None) -> hd.seg.Segmentation:
    """Segment ``datasets`` (one series) by thresholding; returns a binary DICOM SEG with one segment."""
    if not datasets:
        raise ValueError("datasets is empty")
    ordered = sort_by_position(datasets)
    mask = threshold_mask(ordered, threshold).astype(np.uint8)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="bright",
        segmented_property_category=codes.SCT.Tissue,
        segmented_property_type=codes.SCT.Tissue,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(
            name="msdn-test-threshold", version="1", family=codes.cid7162.ArtificialIntelligence
        ),
    )
    return hd.seg.Segmentation(
        source_images=ordered,
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[description],
        series_instance_uid=generate_uid(),
        series_number=901,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        manufacturer="msdn",
        manufacturer_model_name="threshold-test",
        software_versions="0.1",
        device_serial_number="0",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        omit_empty_frames=False,
    )
