"""The mask as gzipped NIfTI-1 with the input's affine (``application/gzip``, ``mask.nii.gz``)."""

from __future__ import annotations

import gzip

import numpy as np

from msdn_core.volume import Volume


def nifti_bytes(labels: np.ndarray, image: Volume) -> bytes:
    """Labels (Z, Y, X) as a ``.nii.gz`` whose voxel axes and affine match the input.

    NIfTI input keeps its header (orientation codes, units) with the data type set to uint8 and no
    intensity scaling; DICOM and .npy input get a fresh header with the computed affine as both qform
    and sform (scanner coordinates).
    """
    import nibabel as nib

    # (X, Y, Z) as a view: Fortran-ordered, so nibabel writes it without a copy (NIfTI stores x fastest,
    # which is the C order of the (Z, Y, X) labels); a C-contiguous transpose would be copied twice
    data = labels.astype(np.uint8, copy=False).transpose(2, 1, 0)
    if image.header is not None and image.source == "nifti":
        header = image.header.copy()
        header.set_data_dtype(np.uint8)
        header.set_slope_inter(1.0, 0.0)
        header.set_data_shape(data.shape)
        cls = nib.Nifti2Image if isinstance(header, nib.Nifti2Header) else nib.Nifti1Image
        img = cls(data, image.affine_ras, header=header)
    else:
        img = nib.Nifti1Image(data, image.affine_ras)
        img.set_qform(image.affine_ras, code=1)
        img.set_sform(image.affine_ras, code=1)
        img.header.set_xyzt_units("mm")
    return gzip.compress(img.to_bytes(), compresslevel=6)
