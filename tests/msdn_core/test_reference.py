"""msdn_core.reference: SEG references matched by source instance or by plane position, grids by affine."""

from __future__ import annotations

import copy
import io

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.sr.codedict import codes

from msdn_core.errors import MsdnError
from msdn_core.readers.dicom import read_series
from msdn_core.reference import labels_from_seg, match_reference
from msdn_core.volume import Volume
from tests.support.dicom_series import ct_series, phantom, to_bytes


def _segment(number: int) -> hd.seg.SegmentDescription:
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=f"s{number}",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Nodule,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
    )


def _seg(sources: list[pydicom.Dataset], masks: np.ndarray) -> pydicom.Dataset:
    """A real SEG written by highdicom; ``masks`` is (Z, Y, X, S) bool, one channel per segment."""
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=masks,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[_segment(k + 1) for k in range(masks.shape[-1])],
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="msdn",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
        omit_empty_frames=True,
    )
    return pydicom.dcmread(io.BytesIO(to_bytes(seg)))


def _without_preserved(seg: pydicom.Dataset) -> pydicom.Dataset:
    """As dcmqi / 3D Slicer write it: no SpatialLocationsPreserved on the source image references."""
    out = copy.deepcopy(seg)
    removed = 0
    for item in out.PerFrameFunctionalGroupsSequence:
        for der in item.get("DerivationImageSequence", []):
            for src in der.get("SourceImageSequence", []):
                if "SpatialLocationsPreserved" in src:
                    del src.SpatialLocationsPreserved
                    removed += 1
    assert removed == len(out.PerFrameFunctionalGroupsSequence)  # highdicom declared it on every frame
    return pydicom.dcmread(io.BytesIO(to_bytes(out)))


@pytest.fixture
def case():
    hu = phantom((5, 24, 32))
    sources = ct_series(hu)
    image = read_series([copy.deepcopy(d) for d in sources])
    truth = np.zeros(image.shape, np.uint8)
    truth[1:4, 5:12, 6:15] = 1
    truth[2:5, 14:20, 18:28] = 2
    masks = np.stack([truth == 1, truth == 2], axis=-1)
    return sources, image, truth, masks


def test_seg_with_preserved_locations_matches_by_source_instance(case):
    sources, image, truth, masks = case
    seg = _seg(sources, masks)
    np.testing.assert_array_equal(labels_from_seg(seg, image=image, name="ref", num_classes=2), truth)


def test_seg_without_spatial_locations_preserved_matches_by_plane_position(case):
    sources, image, truth, masks = case
    seg = _without_preserved(_seg(sources, masks))
    np.testing.assert_array_equal(labels_from_seg(seg, image=image, name="ref", num_classes=2), truth)
    # the same SEG against a shuffled upload order: positions, not order, decide
    shuffled = read_series([copy.deepcopy(d) for d in reversed(sources)])
    np.testing.assert_array_equal(labels_from_seg(seg, image=shuffled, name="ref", num_classes=2), truth)


def test_plane_position_off_the_input_slices_is_refused(case):
    sources, image, _, masks = case
    seg = _without_preserved(_seg(sources, masks))
    item = seg.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0]
    item.ImagePositionPatient = [float(item.ImagePositionPatient[0]), float(item.ImagePositionPatient[1]), 1234.0]
    with pytest.raises(MsdnError, match="SEG frame 1 at .* from the nearest input slice") as err:
        labels_from_seg(seg, image=image, name="ref", num_classes=2)
    assert err.value.code == "reference_mismatch"


def test_overlapping_segments_take_the_highest_segment_number(case):
    sources, image, truth, _ = case
    one = truth > 0  # segment 1 covers both objects, segment 2 only the second: they overlap
    seg = _without_preserved(_seg(sources, np.stack([one, truth == 2], axis=-1)))
    np.testing.assert_array_equal(labels_from_seg(seg, image=image, name="ref", num_classes=2), truth)


def test_grid_references_are_permuted_and_flipped_exactly():
    rng = np.random.default_rng(0)
    affine = np.array([[0.7, 0, 0, -10.0], [0, 0.8, 0, 20.0], [0, 0, 2.5, 30.0], [0, 0, 0, 1]])
    image = Volume(array=np.zeros((4, 5, 6), np.float32), affine=affine, source="nifti")
    labels = rng.integers(0, 3, size=(4, 5, 6)).astype(np.uint8)
    # same voxels stored x-reversed and with y and z swapped: index (x', y', z') = (5 - x, z, y)
    m = np.zeros((4, 4))
    m[0, 0], m[0, 3], m[1, 2], m[2, 1], m[3, 3] = -1, 5, 1, 1, 1
    stored = labels.transpose(2, 1, 0)[::-1].transpose(0, 2, 1)  # (x', y', z') array
    ref = Volume(array=np.ascontiguousarray(stored.transpose(2, 1, 0)), affine=affine @ m, source="nrrd")
    assert ref.shape == (5, 4, 6)
    np.testing.assert_array_equal(match_reference(ref, image=image, name="ref", num_classes=2), labels)
