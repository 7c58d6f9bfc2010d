"""msdn_core.readers: NIfTI and NRRD into the one Volume (LPS affine), checked against the files' own headers."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from msdn_core.errors import MsdnError
from msdn_core.readers import read_path, sniff
from msdn_core.readers.nifti import read_nifti_bytes
from msdn_core.readers.nrrd import read_nrrd_bytes


def test_nifti_axes_and_lps_affine():
    xyz = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2)
    ras = np.array([[-0.7, 0, 0, 90], [0, 0.8, 0, 100], [0, 0, 2.5, -50], [0, 0, 0, 1]])
    vol = read_nifti_bytes(gzip.compress(nib.Nifti1Image(xyz, ras).to_bytes()), name="v.nii.gz")
    assert vol.shape == (2, 3, 4) and vol.array[1, 2, 3] == xyz[3, 2, 1]
    np.testing.assert_allclose(vol.affine, [[0.7, 0, 0, -90], [0, -0.8, 0, -100], [0, 0, 2.5, -50], [0, 0, 0, 1]])
    assert vol.source == "nifti" and vol.header is not None


@pytest.mark.parametrize("space", ["left-posterior-superior", "right-anterior-superior", "RAS"])
def test_nrrd_space_directions_become_the_lps_affine(tmp_path: Path, space: str):
    ijk = np.random.default_rng(0).integers(0, 3, size=(5, 4, 3)).astype(np.uint8)
    directions = np.array([[0.0, 0.9, 0.0], [0.6, 0.0, 0.0], [0.0, 0.0, -2.0]])  # rows: the step of i, j, k
    origin = np.array([1.0, 2.0, 3.0])
    nrrd.write(str(tmp_path / "l.nrrd"), ijk, {"space": space, "space directions": directions, "space origin": origin})
    vol = read_path(tmp_path / "l.nrrd")
    assert vol.source == "nrrd" and vol.shape == (3, 4, 5)
    np.testing.assert_array_equal(vol.array, ijk.transpose(2, 1, 0))
    sign = np.array([1.0, 1.0, 1.0]) if space.startswith("left") else np.array([-1.0, -1.0, 1.0])
    np.testing.assert_allclose(vol.affine[:3, :3], (directions * sign).T)
    np.testing.assert_allclose(vol.affine[:3, 3], origin * sign)
    assert vol.spacing == pytest.approx((2.0, 0.6, 0.9))


def test_nrrd_refusals(tmp_path: Path):
    nrrd.write(str(tmp_path / "s.nrrd"), np.zeros((2, 2, 2)), {"space": "scanner-xyz", "space directions": np.eye(3)})
    with pytest.raises(MsdnError, match="not an anatomical 3D space") as err:
        read_path(tmp_path / "s.nrrd")
    assert err.value.code == "invalid_volume"
    with pytest.raises(MsdnError, match="not a NRRD file"):
        read_nrrd_bytes(b"NRRD0004\nsizes: banana\n\n", name="bad.nrrd")
    with pytest.raises(MsdnError) as err:
        read_nrrd_bytes((tmp_path / "s.nrrd").read_bytes(), name="s.nrrd", max_voxels=7)
    assert err.value.code == "too_many_voxels"


def test_sniff_by_content_not_name():
    assert sniff(b"NRRD0005\n") == "nrrd" and sniff(b"\x93NUMPY") == "npy" and sniff(b"\x1f\x8b..") == "gzip"
    assert sniff(b"\0" * 128 + b"DICM") == "dicom" and sniff(b"hello") == ""
