"""The DICOM series the generator writes: read back with the data contract, pydicom and highdicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian

from model_export.data.manifest import load_manifest
from model_export.data.synth import generate, generate_case, write_ct_series
from model_export.data.volumes import read_volume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"


@pytest.fixture(scope="module")
def dicom_set(tmp_path_factory) -> Path:
    return generate(
        "lung", tmp_path_factory.mktemp("dcm"), num_cases=3, seed=5, size=128, slices=10, dicom=True, version=4
    )


def _series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.iterdir())]


def test_manifest_points_at_dicom_folders_and_validates(dicom_set: Path):
    m = load_manifest(dicom_set)  # DICOM image + NIfTI mask: same shape, spacing, orientation, origin
    assert all(c.image.is_dir() and c.image.parent.name == "dicom" for c in m.cases)
    assert not (dicom_set.parent / "images").exists()


def test_dicom_reads_back_the_same_hu_as_generated(dicom_set: Path):
    m = load_manifest(dicom_set, check_files=False)
    for i, case in enumerate(m.cases):
        expected = generate_case("lung", i, seed=5, size=128, slices=10, version=4)
        vol = read_volume(case.image)
        np.testing.assert_array_equal(vol.array, expected.image.astype(np.float32))
        assert vol.spacing == pytest.approx(expected.spacing, abs=1e-5)
        np.testing.assert_allclose(vol.affine, read_volume(case.mask).affine, atol=1e-4)


def test_ct_tags(dicom_set: Path):
    folder = dicom_set.parent / "dicom" / "lung_001"
    series = _series(folder)
    case = generate_case("lung", 1, seed=5, size=128, slices=10, version=4)
    sz, sy, sx = case.spacing
    assert len(series) == 10
    sops = set()
    for k, ds in enumerate(series):
        assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert ds.file_meta.MediaStorageSOPClassUID == ds.SOPClassUID == CT_IMAGE_STORAGE
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
        assert ds.Modality == "CT" and ds.PhotometricInterpretation == "MONOCHROME2"
        assert str(ds.PatientName) == "SYNTHETIC^SYNTH-LUNG_001" and ds.PatientID == "SYNTH-LUNG_001"
        assert ds.PatientIdentityRemoved == "YES"
        assert ds.StudyInstanceUID == series[0].StudyInstanceUID and ds.SeriesInstanceUID == series[0].SeriesInstanceUID
        assert ds.FrameOfReferenceUID == series[0].FrameOfReferenceUID
        sops.add(ds.SOPInstanceUID)
        assert ds.InstanceNumber == k + 1
        assert [float(v) for v in ds.ImageOrientationPatient] == [1, 0, 0, 0, 1, 0]
        assert [float(v) for v in ds.ImagePositionPatient] == pytest.approx(
            [case.origin[0], case.origin[1], case.origin[2] + k * sz], abs=1e-3
        )
        assert [float(v) for v in ds.PixelSpacing] == pytest.approx([sy, sx], abs=1e-5)
        assert float(ds.SliceThickness) == pytest.approx(sz)
        assert (ds.Rows, ds.Columns) == (128, 128)
        assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation) == (16, 16, 15, 1)
        assert float(ds.RescaleSlope) == 1.0 and float(ds.RescaleIntercept) == -1024.0 and ds.RescaleType == "HU"
        stored = ds.pixel_array
        assert stored.dtype == np.int16
        np.testing.assert_array_equal(stored.astype(np.int32) - 1024, case.image[k])
    assert len(sops) == 10
    all_uids = [series[0].StudyInstanceUID, series[0].SeriesInstanceUID, series[0].FrameOfReferenceUID, *sops]
    assert len(set(all_uids)) == len(all_uids)
    other = _series(dicom_set.parent / "dicom" / "lung_002")[0]
    assert other.StudyInstanceUID != series[0].StudyInstanceUID


def test_uids_are_deterministic(tmp_path: Path):
    hu = np.full((2, 4, 4), -1000, np.int16)
    a = write_ct_series(tmp_path / "a", hu, spacing=(1, 1, 1), key="k", patient_id="P")
    b = write_ct_series(tmp_path / "b", hu, spacing=(1, 1, 1), key="k", patient_id="P")
    c = write_ct_series(tmp_path / "c", hu, spacing=(1, 1, 1), key="other", patient_id="P")
    assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]
    assert pydicom.dcmread(a[0]).SOPInstanceUID != pydicom.dcmread(c[0]).SOPInstanceUID
    with pytest.raises(ValueError, match=r"hu must be \(Z, Y, X\)"):
        write_ct_series(tmp_path / "d", hu[0], spacing=(1, 1, 1), key="k", patient_id="P")


def test_highdicom_builds_a_segmentation_on_the_series(dicom_set: Path):
    """highdicom checks the patient/study/frame-of-reference/plane attributes of the source images."""
    hd = pytest.importorskip("highdicom")
    from pydicom.sr.codedict import codes

    series = _series(dicom_set.parent / "dicom" / "lung_000")
    mask = read_volume(dicom_set.parent / "masks" / "lung_000.nii.gz", dtype=np.uint8).array
    seg = hd.seg.Segmentation(
        source_images=series,
        pixel_array=mask.astype(bool),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="nodule",
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Nodule,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        ],
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="msdn",
        manufacturer_model_name="test",
        software_versions="0",
        device_serial_number="0",
    )
    assert seg.PatientID == series[0].PatientID and seg.FrameOfReferenceUID == series[0].FrameOfReferenceUID
    # read the frames back through highdicom: the mask's slices come back on the right source images
    back = hd.seg.Segmentation.from_dataset(pydicom.dcmread(_save(seg, dicom_set.parent / "seg.dcm")))
    sop_uids = [(s.StudyInstanceUID, s.SeriesInstanceUID, s.SOPInstanceUID) for s in series]
    arr = back.get_pixels_by_source_instance(
        source_sop_instance_uids=[u[2] for u in sop_uids], segment_numbers=[1], ignore_spatial_locations=True
    )
    np.testing.assert_array_equal(arr[..., 0].astype(bool), mask.astype(bool))


def _save(ds, path: Path) -> Path:
    ds.save_as(path)
    return path


def test_regenerating_into_the_same_folder_replaces_the_series(tmp_path: Path):
    generate("cochlea", tmp_path, num_cases=3, size=128, slices=14, dicom=True, workers=1)
    path = generate("cochlea", tmp_path, num_cases=3, seed=1, size=128, slices=12, dicom=True, workers=1)
    m = load_manifest(path)
    assert read_volume(m.cases[0].image).shape == (12, 128, 128)
    assert len(list(m.cases[0].image.iterdir())) == 12
