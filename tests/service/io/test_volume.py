"""service.io.volume: NIfTI and .npy volumes."""

from __future__ import annotations

import gzip
import io
import tempfile

import nibabel as nib
import numpy as np
import pytest

from msdn_core.errors import MsdnError
from service.errors import InvalidInput, InvalidVolume, LimitExceeded
from service.io.volume import parse_spacing, read_volume
from tests.service.helpers import make_settings


@pytest.fixture
def settings(model_1c):
    return make_settings(model_1c)


def _npy(array) -> io.BytesIO:
    buffer = io.BytesIO()
    np.save(buffer, array)
    buffer.seek(0)
    return buffer


def _nifti(xyz: np.ndarray, affine: np.ndarray, *, gz: bool = False) -> io.BytesIO:
    data = nib.Nifti1Image(xyz, affine).to_bytes()
    return io.BytesIO(gzip.compress(data) if gz else data)


def test_npy_needs_spacing_and_keeps_axes(settings):
    zyx = np.arange(2 * 3 * 4, dtype=np.int16).reshape(2, 3, 4)
    image = read_volume(_npy(zyx), name="v.npy", spacing="2.5, 0.5,0.75", settings=settings)
    np.testing.assert_array_equal(image.array, zyx)
    assert image.spacing == (2.5, 0.5, 0.75) and image.source == "npy"
    np.testing.assert_array_equal(image.affine_ras, np.diag([0.75, 0.5, 2.5, 1.0]))  # as NIfTI would have it
    with pytest.raises(InvalidInput) as err:
        read_volume(_npy(zyx), name="v.npy", spacing=None, settings=settings)
    assert err.value.code == "spacing_required"


def test_2d_npy_is_one_slice(settings):
    image = read_volume(_npy(np.ones((5, 6), np.float32)), name="s.npy", spacing="[1, 1, 1]", settings=settings)
    assert image.shape == (1, 5, 6)


@pytest.mark.parametrize("gz", [False, True])
def test_nifti_axes_spacing_affine(settings, gz):
    xyz = np.random.default_rng(0).integers(-1000, 1000, size=(6, 5, 4)).astype(np.int16)
    affine = np.array([[-0.7, 0, 0, 90], [0, -0.8, 0, 100], [0, 0, 2.5, -50], [0, 0, 0, 1]])
    image = read_volume(_nifti(xyz, affine, gz=gz), name="v.nii.gz", spacing=None, settings=settings)
    np.testing.assert_array_equal(image.array, xyz.transpose(2, 1, 0))
    assert image.spacing == pytest.approx((2.5, 0.8, 0.7))
    np.testing.assert_allclose(image.affine_ras, affine)
    np.testing.assert_allclose(image.affine, np.diag([-1, -1, 1, 1]) @ affine)  # LPS
    with pytest.raises(InvalidInput, match="leave out the 'spacing'"):
        read_volume(_nifti(xyz, affine), name="v.nii", spacing="1,1,1", settings=settings)


@pytest.mark.parametrize("gz", [False, True])
def test_nifti_slices_read_only_those_in_their_stored_integer_type(settings, gz, tmp_path):
    xyz = np.random.default_rng(1).integers(-1000, 1000, size=(6, 5, 8)).astype(np.int16)
    affine = np.diag([0.7, 0.8, 2.5, 1.0])
    # an upload as the service holds it: a spooled temporary file, rolled over to disk
    upload = tempfile.SpooledTemporaryFile(max_size=64, dir=tmp_path)
    upload.write(_nifti(xyz, affine, gz=gz).getvalue())
    upload.seek(0)
    asked = []
    image = read_volume(
        upload,
        name="v.nii",
        spacing=None,
        settings=settings,
        slices=lambda shape, affine: asked.append(shape) or [5, 2],
    )
    assert asked == [(8, 5, 6)] and image.decoded.tolist() == [2, 5]
    assert image.array.dtype == np.int16 and image.array.flags.c_contiguous  # as stored: half of float32
    zyx = xyz.transpose(2, 1, 0)
    np.testing.assert_array_equal(image.array[[2, 5]], zyx[[2, 5]])
    assert not image.array[[0, 1, 3, 4, 6, 7]].any()
    full = read_volume(_nifti(xyz, affine, gz=gz), name="v.nii", spacing=None, settings=settings)
    np.testing.assert_array_equal(image.affine, full.affine)


def test_nifti_scaling_is_applied(settings):
    img = nib.Nifti1Image(np.full((4, 4, 2), 10, np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, -5.0)
    image = read_volume(io.BytesIO(img.to_bytes()), name="s.nii", spacing=None, settings=settings)
    assert float(image.array.max()) == 15.0


def test_bad_files(settings):
    with pytest.raises((InvalidVolume, MsdnError), match="not a NIfTI"):
        read_volume(io.BytesIO(b"just text"), name="x.nii", spacing=None, settings=settings)
    pickled = io.BytesIO()
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    pickled.seek(0)
    with pytest.raises((InvalidVolume, MsdnError), match="not numeric"):
        read_volume(pickled, name="o.npy", spacing="1,1,1", settings=settings)
    with pytest.raises((InvalidVolume, MsdnError), match=r"\(Z, Y, X\)"):
        read_volume(_npy(np.zeros((2, 2, 2, 2))), name="4d.npy", spacing="1,1,1", settings=settings)
    with pytest.raises((InvalidVolume, MsdnError), match="NaN"):
        read_volume(_npy(np.full((1, 2, 2), np.nan)), name="nan.npy", spacing="1,1,1", settings=settings)


def test_voxel_limit_checked_from_the_header(settings):
    small = settings.model_copy(update={"max_voxels": 100})
    with pytest.raises((LimitExceeded, MsdnError)) as err:
        read_volume(_npy(np.zeros((2, 10, 10))), name="big.npy", spacing="1,1,1", settings=small)
    assert err.value.code == "too_many_voxels"


@pytest.mark.parametrize("text", ["1,2", "a,b,c", "1,-1,1", "[1, 2, nan]", "0,1,1"])
def test_bad_spacing(text):
    with pytest.raises(InvalidInput) as err:
        parse_spacing(text)
    assert err.value.code == "invalid_spacing"
