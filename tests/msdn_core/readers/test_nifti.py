"""msdn_core.readers.nifti: NIfTI into the one Volume (LPS affine), checked against the file's own header."""

from __future__ import annotations

import gzip
import io

import nibabel as nib
import numpy as np
import pytest

from msdn_core.readers.nifti import read_nifti_bytes, read_nifti_file, read_nifti_fileobj


def test_nifti_axes_and_lps_affine():
    xyz = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2)
    ras = np.array([[-0.7, 0, 0, 90], [0, 0.8, 0, 100], [0, 0, 2.5, -50], [0, 0, 0, 1]])
    vol = read_nifti_bytes(gzip.compress(nib.Nifti1Image(xyz, ras).to_bytes()), name="v.nii.gz")
    assert vol.shape == (2, 3, 4) and vol.array[1, 2, 3] == xyz[3, 2, 1]
    np.testing.assert_allclose(vol.affine, [[0.7, 0, 0, -90], [0, -0.8, 0, -100], [0, 0, 2.5, -50], [0, 0, 0, 1]])
    assert vol.source == "nifti" and vol.header is not None


class RecordingFile(io.FileIO):
    """A real file on disk that records the byte ranges read from it (read and readinto)."""

    def __init__(self, path) -> None:
        super().__init__(path, "rb")
        self.ranges: list[tuple[int, int]] = []

    def read(self, size=-1):
        start = self.tell()
        data = super().read(size)
        self.ranges.append((start, start + len(data)))
        return data

    def readinto(self, buffer):
        start = self.tell()
        n = super().readinto(buffer)
        self.ranges.append((start, start + (n or 0)))
        return n


def _ct_nifti(tmp_path, *, slope: float = 1.0, inter: float = 0.0, four_d: bool = False):
    rng = np.random.default_rng(3)
    xyz = rng.integers(-1000, 1000, size=(7, 6, 9)).astype(np.int16)
    ras = np.array([[-0.7, 0, 0, 90], [0, 0.8, 0, 100], [0, 0, 2.5, -50], [0, 0, 0, 1]])
    img = nib.Nifti1Image(xyz[..., None] if four_d else xyz, ras)
    img.header.set_slope_inter(slope, inter)
    path = tmp_path / "ct.nii"
    path.write_bytes(img.to_bytes())
    return path, xyz, int(nib.load(path).dataobj.offset), xyz[..., 0].nbytes  # where slice 0's bytes start


@pytest.mark.parametrize("scaled, four_d", [(False, False), (True, False), (False, True)])
def test_partial_read_equals_the_full_read_on_the_slices_asked(tmp_path, scaled, four_d):
    path, xyz, _, _ = _ct_nifti(tmp_path, slope=2.0 if scaled else 1.0, inter=-3.0 if scaled else 0.0, four_d=four_d)
    full = read_nifti_file(path)
    seen = []
    part = read_nifti_file(path, slices=lambda shape, affine: seen.append(shape) or [6, 1, 1, 4, 99, -1])
    assert seen == [(9, 6, 7)]  # called once with the (Z, Y, X) shape, before any voxel is read
    np.testing.assert_array_equal(part.decoded, [1, 4, 6])  # sorted, unique, out-of-range dropped
    assert part.array.dtype == full.array.dtype and part.shape == full.shape
    for z in (1, 4, 6):
        np.testing.assert_array_equal(part.array[z], full.array[z])
    expected = xyz.transpose(2, 1, 0).astype(np.float64) * (2.0 if scaled else 1.0) - (3.0 if scaled else 0.0)
    np.testing.assert_array_equal(part.array[4], expected[4])  # against the array written, by hand
    untouched = [z for z in range(9) if z not in (1, 4, 6)]
    assert not part.array[untouched].any()
    np.testing.assert_array_equal(part.affine, full.affine)
    assert part.header == full.header and full.decoded is None


def test_untouched_slices_are_never_read_from_the_file(tmp_path):
    path, _, offset, slice_bytes = _ct_nifti(tmp_path)
    with RecordingFile(path) as fh:
        vol = read_nifti_fileobj(fh, name="ct.nii", slices=lambda shape, affine: [2, 5])
    assert vol.decoded.tolist() == [2, 5]
    read = set()
    for start, stop in fh.ranges:
        read.update(range(start, stop))
    for z in range(9):
        block = set(range(offset + z * slice_bytes, offset + (z + 1) * slice_bytes))
        if z in (2, 5):
            assert block <= read, f"slice {z} not read"
        else:
            assert not block & read, f"slice {z} was read"
    # the whole-volume read, for contrast, reads every slice's bytes
    with RecordingFile(path) as fh:
        read_nifti_fileobj(fh, name="ct.nii")
    assert sum(stop - start for start, stop in fh.ranges) >= 9 * slice_bytes


def test_gzipped_nifti_is_decompressed_whole_then_converted_where_asked(tmp_path):
    path, xyz, _, _ = _ct_nifti(tmp_path)
    gz = tmp_path / "ct.nii.gz"
    gz.write_bytes(gzip.compress(path.read_bytes()))
    part = read_nifti_file(gz, slices=lambda shape, affine: [0, 8])
    np.testing.assert_array_equal(part.array[[0, 8]], xyz.transpose(2, 1, 0)[[0, 8]])
    assert not part.array[1:8].any() and part.decoded.tolist() == [0, 8]
    np.testing.assert_array_equal(part.affine, read_nifti_file(path).affine)
    assert read_nifti_bytes(gz.read_bytes(), name="ct.nii.gz", slices=lambda shape, affine: None).decoded is None
