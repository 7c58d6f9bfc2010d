"""msdn_core.readers.nifti: NIfTI into the one Volume (LPS affine), checked against the file's own header."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np

from msdn_core.readers.nifti import read_nifti_bytes


def test_nifti_axes_and_lps_affine():
    xyz = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2)
    ras = np.array([[-0.7, 0, 0, 90], [0, 0.8, 0, 100], [0, 0, 2.5, -50], [0, 0, 0, 1]])
    vol = read_nifti_bytes(gzip.compress(nib.Nifti1Image(xyz, ras).to_bytes()), name="v.nii.gz")
    assert vol.shape == (2, 3, 4) and vol.array[1, 2, 3] == xyz[3, 2, 1]
    np.testing.assert_allclose(vol.affine, [[0.7, 0, 0, -90], [0, -0.8, 0, -100], [0, 0, 2.5, -50], [0, 0, 0, 1]])
    assert vol.source == "nifti" and vol.header is not None
