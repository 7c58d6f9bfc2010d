"""service.io.dicom on pydicom's real files and on synthetic series."""

from __future__ import annotations

import copy
import io
import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from service.errors import (
    InconsistentGeometry,
    InvalidInput,
    LimitExceeded,
    MixedSeries,
    ModalityNotAllowed,
    NoPixelData,
    NotDicom,
    UnsupportedTransferSyntax,
)
from service.io.dicom import parse_dicom, series_volume
from tests.service.helpers import ct5n_paths, make_settings, pydicom_file
from tests.support.dicom_series import ct_series, phantom, to_bytes


@pytest.fixture
def settings(model_1c):
    return make_settings(model_1c)


def _hu(ds: pydicom.Dataset) -> np.ndarray:
    """Independent path: pydicom's own pixel_array + modality LUT."""
    return apply_modality_lut(ds.pixel_array, ds).astype(np.float32)


def test_ct_small_single_slice_in_hounsfield_units(settings):
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    expected = _hu(pydicom.dcmread(pydicom_file("CT_small.dcm")))
    image = series_volume([ds], settings=settings)
    assert image.shape == (1, 128, 128)
    np.testing.assert_array_equal(image.array[0], expected)
    assert image.array.min() == -896.0  # stored minimum 128 with intercept -1024
    assert image.spacing[1:] == pytest.approx((0.661468, 0.661468))
    assert image.modality == "CT" and image.source == "dicom"


def test_ct5n_series_sorted_along_the_normal_whatever_the_upload_order(settings):
    paths = ct5n_paths()
    datasets = [pydicom.dcmread(p) for p in paths]
    by_z = sorted(datasets, key=lambda d: float(d.ImagePositionPatient[2]))
    expected = np.stack([_hu(copy.deepcopy(d)) for d in by_z])
    shuffled = datasets[:]
    random.Random(3).shuffle(shuffled)
    image = series_volume([(f"f{i}", d) for i, d in enumerate(shuffled)], settings=settings)
    assert image.shape == (5, 16, 16)
    np.testing.assert_array_equal(image.array, expected)
    assert image.spacing == pytest.approx((2.5, 0.488281, 0.488281))
    uids = [str(d.SOPInstanceUID) for d in by_z]
    assert image.series.sop_instance_uids == uids
    # affine: voxel (0, 0, z) is the z-th sorted position (LPS -> RAS flips x and y)
    for z in (0, 4):
        lps = np.array([float(v) for v in by_z[z].ImagePositionPatient])
        np.testing.assert_allclose(image.affine @ [0, 0, z, 1], [-lps[0], -lps[1], lps[2], 1], atol=1e-4)


def test_jpeg2000_512_ct_is_decoded(settings):
    ds = pydicom.dcmread(pydicom_file("693_J2KI.dcm"))
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.91"
    expected = _hu(pydicom.dcmread(pydicom_file("693_J2KI.dcm")))
    image = series_volume([ds], settings=settings)
    assert image.shape == (1, 512, 512)
    np.testing.assert_array_equal(image.array[0], expected)
    assert "PixelData" not in ds  # released after decoding


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_synthetic_series_round_trip(settings, syntax):
    hu = phantom((3, 32, 48))
    datasets = [pydicom.dcmread(io.BytesIO(to_bytes(d))) for d in ct_series(hu, transfer_syntax=syntax)]
    assert datasets[0].file_meta.TransferSyntaxUID == syntax
    image = series_volume(datasets, settings=settings)
    np.testing.assert_array_equal(image.array, hu.astype(np.float32))


def test_rescale_slope_is_applied(settings):
    hu = np.full((2, 16, 16), 100.0)
    hu[:, 4:8, 4:8] = 500.0
    image = series_volume(ct_series(hu, slope=0.5, intercept=-1024.0), settings=settings)
    np.testing.assert_array_equal(image.array, hu)


def test_enhanced_multiframe_ct_matches_the_single_frame_series(settings):
    import highdicom as hd

    paths = ct5n_paths()
    singles = [pydicom.dcmread(p) for p in paths]
    expected = series_volume([pydicom.dcmread(p) for p in paths], settings=settings)
    multi = hd.legacy.LegacyConvertedEnhancedCTImage(
        singles,
        series_instance_uid=generate_uid(),
        series_number=9,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    ds = pydicom.dcmread(io.BytesIO(to_bytes(multi)))
    assert int(ds.NumberOfFrames) == 5 and "PerFrameFunctionalGroupsSequence" in ds
    image = series_volume([ds], settings=settings)
    np.testing.assert_array_equal(image.array, expected.array)
    assert image.spacing == pytest.approx(expected.spacing)
    assert image.series.multiframe
    # frame numbers follow the sorted positions
    positions = [
        float(ds.PerFrameFunctionalGroupsSequence[f - 1].PlanePositionSequence[0].ImagePositionPatient[2])
        for f in image.series.frame_numbers
    ]
    assert positions == sorted(positions)


def test_not_dicom_and_meta_less_files():
    with pytest.raises(NotDicom, match="not a DICOM Part 10 file"):
        parse_dicom(b"hello, this is text", name="note.txt")
    with pytest.raises(NotDicom, match="no_meta.dcm: not a DICOM Part 10"):
        parse_dicom(Path(pydicom_file("no_meta.dcm")).read_bytes(), name="no_meta.dcm")


def test_truncated_pixel_data_is_a_clear_error(settings):
    ds = pydicom.dcmread(pydicom_file("MR_truncated.dcm"))
    mr = settings.model_copy(update={"allowed_modalities": ["MR"]})
    with pytest.raises(InvalidInput) as err:
        series_volume([("MR_truncated.dcm", ds)], settings=mr)
    assert err.value.code == "pixel_data_invalid"
    assert "MR_truncated.dcm" in err.value.message


def test_modality_not_allowed(settings):
    ds = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    with pytest.raises(ModalityNotAllowed, match="'MR' is not allowed"):
        series_volume([ds], settings=settings)
    anything = settings.model_copy(update={"allowed_modalities": ["*"]})
    assert series_volume([ds], settings=anything).modality == "MR"


def test_no_pixel_data(settings):
    ds = pydicom.dcmread(pydicom_file("rtplan.dcm"))
    anything = settings.model_copy(update={"allowed_modalities": ["*"]})
    with pytest.raises(NoPixelData, match="rtplan.dcm: no pixel data"):
        series_volume([("rtplan.dcm", ds)], settings=anything)


def test_mixed_series_lists_them_and_series_uid_picks_one(settings):
    a = ct_series(np.zeros((2, 8, 8)))
    b = ct_series(np.ones((3, 8, 8)) * 50)
    with pytest.raises(MixedSeries) as err:
        series_volume(a + b, settings=settings)
    listed = {s["series_instance_uid"]: s["instances"] for s in err.value.detail["series"]}
    assert listed == {a[0].SeriesInstanceUID: 2, b[0].SeriesInstanceUID: 3}
    image = series_volume(a + b, settings=settings, series_uid=str(b[0].SeriesInstanceUID))
    assert image.shape == (3, 8, 8) and float(image.array.max()) == 50.0
    with pytest.raises(MixedSeries, match="not in the upload"):
        series_volume(a + b, settings=settings, series_uid="1.2.3")


def test_duplicate_positions(settings):
    datasets = ct_series(np.zeros((3, 8, 8)))
    datasets[2].ImagePositionPatient = list(datasets[1].ImagePositionPatient)
    with pytest.raises(InconsistentGeometry, match="duplicate slice positions"):
        series_volume(datasets, settings=settings)


def test_irregular_spacing(settings):
    datasets = ct_series(np.zeros((6, 8, 8)), spacing=(2.0, 1.0, 1.0))
    del datasets[3]  # a missing slice: gaps 2, 2, 4, 2 mm
    with pytest.raises(InconsistentGeometry, match=r"irregular slice spacing: 4\.000 mm .* median gap 2\.000"):
        series_volume(datasets, settings=settings)


def test_mixed_orientations(settings):
    datasets = ct_series(np.zeros((3, 8, 8)))
    datasets[1].ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    with pytest.raises(InconsistentGeometry, match="mixed orientations"):
        series_volume(datasets, settings=settings)


def test_mixed_sizes(settings):
    a = ct_series(np.zeros((2, 8, 8)))
    b = ct_series(np.zeros((1, 8, 10)), series_uid=str(a[0].SeriesInstanceUID))
    with pytest.raises(InconsistentGeometry, match="mixes image sizes"):
        series_volume(a + b, settings=settings)


def test_sagittal_series_sorted_along_its_normal(settings):
    hu = np.arange(3 * 4 * 5, dtype=float).reshape(3, 4, 5)
    datasets = ct_series(hu, orientation=(0, 1, 0, 0, 0, -1), spacing=(1.5, 1.0, 1.0))
    image = series_volume(list(reversed(datasets)), settings=settings)
    np.testing.assert_array_equal(image.array, hu)
    assert image.spacing[0] == pytest.approx(1.5)


def test_unsupported_transfer_syntax(settings):
    ds = ct_series(np.zeros((1, 8, 8)))[0]
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2 video
    with pytest.raises(UnsupportedTransferSyntax, match="MPEG2"):
        series_volume([ds], settings=settings)


def test_slice_and_voxel_limits(settings):
    datasets = ct_series(np.zeros((4, 8, 8)))
    with pytest.raises(LimitExceeded) as err:
        series_volume(datasets, settings=settings.model_copy(update={"max_slices": 3}))
    assert err.value.code == "too_many_slices"
    with pytest.raises(LimitExceeded) as err:
        series_volume(datasets, settings=settings.model_copy(update={"max_voxels": 4 * 8 * 8 - 1}))
    assert err.value.code == "too_many_voxels"
