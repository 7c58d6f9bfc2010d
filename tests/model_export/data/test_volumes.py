"""Training volume I/O through the core readers: NIfTI round trips, DICOM folders (pydicom's real CT series), errors."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

from model_export.data.volumes import is_nifti, read_volume, write_nifti
from msdn_core.errors import MsdnError

CT5N = Path(get_testdata_file("CT_small.dcm")).parent / "dicomdirtests" / "98892001" / "CT5N"


def test_is_nifti():
    assert is_nifti("a.nii") and is_nifti("dir/A.NII.GZ") and not is_nifti("a.nrrd") and not is_nifti("a.gz")


@pytest.mark.parametrize("name", ["v.nii", "v.nii.gz"])
@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32])
def test_nifti_round_trip(tmp_path: Path, name: str, dtype):
    rng = np.random.default_rng(1)
    array = (rng.normal(size=(5, 7, 9)) * 100).astype(dtype)
    write_nifti(tmp_path / name, array, spacing=(2.5, 0.7, 0.6))
    vol = read_volume(tmp_path / name, dtype=np.float64)
    np.testing.assert_array_equal(vol.array, array.astype(np.float64))
    assert vol.shape == (5, 7, 9) and vol.spacing == pytest.approx((2.5, 0.7, 0.6))
    np.testing.assert_allclose(vol.affine_ras, np.diag([0.6, 0.7, 2.5, 1.0]), atol=1e-6)
    # the file itself is (X, Y, Z) with that affine: an independent read with nibabel
    img = nib.load(str(tmp_path / name))
    assert img.shape == (9, 7, 5)
    assert float(np.asarray(img.dataobj)[8, 3, 1]) == float(array[1, 3, 8])
    assert img.header.get_xyzt_units()[0] == "mm"


def test_nifti_round_trip_keeps_a_given_affine(tmp_path: Path):
    affine = np.array([[-0.5, 0, 0, 10.0], [0, -0.5, 0, -20.0], [0, 0, 1.25, 30.0], [0, 0, 0, 1]])
    write_nifti(tmp_path / "a.nii.gz", np.zeros((3, 4, 5), np.int16), affine=affine)
    vol = read_volume(tmp_path / "a.nii.gz")
    np.testing.assert_allclose(vol.affine_ras, affine)
    assert vol.spacing == pytest.approx((1.25, 0.5, 0.5))
    assert vol.array.dtype == np.float32


def test_nifti_4d_singleton_is_squeezed_and_2d_rejected(tmp_path: Path):
    data = np.arange(2 * 3 * 4, dtype=np.int16).reshape(4, 3, 2, 1)  # (X, Y, Z, 1)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "v4.nii"))
    vol = read_volume(tmp_path / "v4.nii")
    assert vol.shape == (2, 3, 4) and vol.array[1, 2, 3] == data[3, 2, 1, 0]
    nib.save(nib.Nifti1Image(np.zeros((4, 3), np.int16), np.eye(4)), str(tmp_path / "v2.nii"))
    assert read_volume(tmp_path / "v2.nii").shape == (1, 3, 4)  # a 2D image is one slice
    nib.save(nib.Nifti1Image(np.zeros((4, 3, 2, 2), np.int16), np.eye(4)), str(tmp_path / "v4x2.nii"))
    with pytest.raises(MsdnError, match=r"NIfTI must be 3D"):
        read_volume(tmp_path / "v4x2.nii")
    with pytest.raises(ValueError, match=r"array must be \(Z, Y, X\)"):
        write_nifti(tmp_path / "x.nii", np.zeros((3, 4)))


def test_read_volume_errors(tmp_path: Path):
    with pytest.raises(MsdnError, match="file not found"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "v.mha").write_bytes(b"ObjectType = Image\n")
    with pytest.raises(MsdnError, match="unsupported volume format"):
        read_volume(tmp_path / "v.mha")
    (tmp_path / "v.nrrd").write_bytes(b"NRRD0004\n")
    with pytest.raises(MsdnError, match="not a NRRD file|NRRD must hold one 3D volume"):
        read_volume(tmp_path / "v.nrrd")
    write_nifti(tmp_path / "ok.nii.gz", np.ones((3, 8, 8), np.int16))
    raw = (tmp_path / "ok.nii.gz").read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(MsdnError, match="corrupt gzip data") as err:
        read_volume(tmp_path / "cut.nii.gz")
    assert err.value.code == "invalid_volume"
    (tmp_path / "junk.nii").write_bytes(b"\x00" * 20)
    with pytest.raises(MsdnError, match="unsupported volume format"):
        read_volume(tmp_path / "junk.nii")


def test_read_pydicom_ct_series_sorted_by_position_with_hu():
    vol = read_volume(CT5N)
    # independent path: pydicom, sorted by ImagePositionPatient z, rescale applied by hand
    datasets = sorted((pydicom.dcmread(p) for p in CT5N.iterdir()), key=lambda d: float(d.ImagePositionPatient[2]))
    expected = np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in datasets])
    assert vol.shape == (5, 16, 16)
    np.testing.assert_array_equal(vol.array, expected.astype(np.float32))
    assert vol.spacing == pytest.approx((2.5, 0.488281, 0.488281))
    # RAS affine: x and y flipped from DICOM's LPS; origin = first slice's position
    np.testing.assert_allclose(
        vol.affine_ras,
        [[-0.488281, 0, 0, 72.199997], [0, -0.488281, 0, 143.0], [0, 0, 2.5, -1.2375], [0, 0, 0, 1]],
        atol=1e-5,
    )


def test_dicom_folder_refuses_unreadable_files_but_passes_over_hidden_ones(tmp_path: Path):
    shutil.copytree(CT5N, tmp_path / "s")
    (tmp_path / "s" / ".DS_Store").write_text("hidden")
    assert read_volume(tmp_path / "s").shape == (5, 16, 16)
    (tmp_path / "s" / "README.txt").write_text("not dicom")
    with pytest.raises(MsdnError, match="README.txt: not a DICOM Part 10 file") as err:
        read_volume(tmp_path / "s")
    assert err.value.code == "not_dicom"


def test_dicom_folder_errors(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MsdnError, match="no DICOM images found"):
        read_volume(tmp_path / "empty")
    # two series in one folder
    shutil.copytree(CT5N, tmp_path / "two")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.save_as(tmp_path / "two" / "other.dcm")
    with pytest.raises(MsdnError, match="holds 2 series") as err:
        read_volume(tmp_path / "two")
    assert err.value.code == "mixed_series"
    # a missing middle slice makes the spacing irregular
    shutil.copytree(CT5N, tmp_path / "gap")
    for p in (tmp_path / "gap").iterdir():
        if abs(float(pydicom.dcmread(p).ImagePositionPatient[2]) - 3.7625) < 1e-3:
            p.unlink()
    with pytest.raises(MsdnError, match="irregular slice spacing"):
        read_volume(tmp_path / "gap")


def test_single_dicom_slice_uses_slice_thickness(tmp_path: Path):
    (tmp_path / "one").mkdir()
    shutil.copy(get_testdata_file("CT_small.dcm"), tmp_path / "one" / "a.dcm")
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    vol = read_volume(tmp_path / "one")
    assert vol.shape == (1, 128, 128)
    assert vol.spacing[0] == pytest.approx(float(ds.SliceThickness))
    np.testing.assert_array_equal(
        vol.array[0], (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.float32)
    )


def test_dicom_read_honours_dtype():
    vol = read_volume(CT5N, dtype=np.int16)
    assert vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, read_volume(CT5N).array.astype(np.int16))
