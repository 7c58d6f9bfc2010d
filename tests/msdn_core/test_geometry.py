"""msdn_core.geometry: the LPS convention, derived spacing, grid mapping and the tilt policy."""

from __future__ import annotations

import numpy as np
import pytest

from msdn_core import geometry
from msdn_core.errors import MsdnError
from msdn_core.volume import Volume


def test_lps_ras_round_trip_and_derived_geometry():
    lps = np.array([[0, 0, 2.5, 10.0], [0.7, 0, 0, -20.0], [0, -0.8, 0, 30.0], [0, 0, 0, 1]])
    ras = geometry.lps_to_ras(lps)
    np.testing.assert_array_equal(ras[:2], -lps[:2])
    np.testing.assert_array_equal(geometry.ras_to_lps(ras), lps)
    vol = Volume(array=np.zeros((3, 4, 5), np.float32), affine=lps, source="nifti")
    assert vol.spacing == pytest.approx((2.5, 0.8, 0.7))  # (sz, sy, sx): norms of the z, y, x columns
    np.testing.assert_array_equal(vol.origin, [10.0, -20.0, 30.0])
    np.testing.assert_array_equal(vol.direction, [[0, 0, 1], [1, 0, 0], [0, -1, 0]])
    np.testing.assert_allclose(vol.slice_positions()[2], [15.0, -20.0, 30.0])


def test_volume_refuses_a_singular_affine():
    with pytest.raises(MsdnError, match="not a finite invertible 4x4"):
        Volume(array=np.zeros((2, 2, 2)), affine=np.diag([1.0, 0.0, 1.0, 1.0]), source="npy")


def test_grid_mapping_finds_flips_and_permutations_and_refuses_the_rest():
    a = geometry.axis_affine((2.0, 1.0, 0.5), origin=(5, 6, 7))
    assert geometry.grid_mapping((3, 4, 5), a, (3, 4, 5), a).identity
    flip_y = np.eye(4)
    flip_y[1, 1], flip_y[1, 3] = -1, 3
    m = geometry.grid_mapping((3, 4, 5), a @ flip_y, (3, 4, 5), a)
    assert m.perm == (0, 1, 2) and m.flip == (False, True, False)
    shifted = a.copy()
    shifted[0, 3] += 0.25  # half an x voxel
    assert geometry.grid_mapping((3, 4, 5), shifted, (3, 4, 5), a) is None
    assert geometry.grid_mapping((3, 4, 6), a, (3, 4, 5), a) is None  # other extent
    finer = a.copy()
    finer[0, 0] = 0.25
    with pytest.raises(MsdnError, match="is not the input's grid") as err:
        geometry.map_to_grid(np.zeros((3, 4, 10)), finer, (3, 4, 5), a)
    assert err.value.code == "reference_mismatch"
    assert err.value.detail["reference"]["spacing_zyx_mm"] == [2.0, 1.0, 0.25]
    assert err.value.detail["input"]["spacing_zyx_mm"] == [2.0, 1.0, 0.5]


def test_small_shear_is_dropped_without_resampling():
    array = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    affine = geometry.axis_affine((2.0, 1.0, 1.0))
    affine[1, 2] = 1e-5  # 0.0003 degrees
    out, fixed, tilt = geometry.correct_tilt(array, affine)
    assert out is array and tilt == 0.0 and geometry.shear_deg(fixed) == 0.0


def test_tilt_correction_and_its_inverse_for_labels():
    """Forward (linear, values) and back (nearest, labels) with a whole-pixel tilt give the acquired slices again."""
    acquired = np.zeros((3, 12, 10), np.float32)
    for z in range(3):
        acquired[z, 6 - z : 9 - z, 3:6] = 1.0  # a fixed object, one row higher per acquired slice
    affine = geometry.axis_affine((2.0, 0.5, 0.5))
    affine[1, 2] = 0.5  # each slice steps one row (0.5 mm) along y: tilt atan(0.25)
    positions = np.array([affine[:3, 3] + z * affine[:3, 2] for z in range(3)])
    out, fixed, tilt = geometry.correct_tilt(acquired, affine)
    assert tilt == pytest.approx(np.degrees(np.arctan(0.25)))
    assert all(out[z, 6:9, 3:6].all() and out[z].sum() == 9 for z in range(3))
    back = geometry.to_acquired_slices((out > 0.5).astype(np.uint8), fixed, positions)
    np.testing.assert_array_equal(back, acquired.astype(np.uint8))
    np.testing.assert_array_equal(geometry.to_acquired_slices(back, fixed, positions, inverse=True), out > 0.5)


def _part(affine: np.ndarray, start_xyz, flip_x: bool = False, nx: int = 0) -> np.ndarray:
    """The affine of a grid whose index 0 is ``start_xyz`` of ``affine``'s grid (x reversed: nx voxels)."""
    shift = np.eye(4)
    shift[:3, 3] = start_xyz
    if flip_x:
        shift[0, 0], shift[0, 3] = -1.0, start_xyz[0] + nx - 1
    return affine @ shift


@pytest.mark.parametrize("flip_x", [False, True])
def test_a_voxel_aligned_part_is_placed_on_the_grid_and_zero_elsewhere(flip_x):
    """A dcmqi / Slicer-style reference: the box of slices 5..16 and columns 2..8 of a 20 x 6 x 10 grid."""
    dst = geometry.axis_affine((2.5, 0.8, 0.7), origin=(-30.0, 12.0, 100.0))
    labels = np.random.default_rng(3).integers(0, 3, (12, 6, 7)).astype(np.uint8)  # (Z, Y, X) of the part
    src = labels[:, :, ::-1] if flip_x else labels
    affine = _part(dst, (2, 0, 5), flip_x=flip_x, nx=7)
    out = geometry.map_to_grid(src, affine, (20, 6, 10), dst, subgrid=True)
    expected = np.zeros((20, 6, 10), np.uint8)
    expected[5:17, :, 2:9] = labels
    np.testing.assert_array_equal(out, expected)
    with pytest.raises(MsdnError, match="not the input's grid"):  # only where asked for
        geometry.map_to_grid(src, affine, (20, 6, 10), dst)


@pytest.mark.parametrize(
    ("start", "shape"),
    [((2.5, 0, 5), (12, 6, 7)), ((0, 0, 15), (12, 6, 7)), ((-1, 0, 0), (12, 6, 7))],
    ids=["half-voxel-off", "past-the-end", "before-the-start"],
)
def test_a_part_off_the_voxel_centres_or_outside_is_refused(start, shape):
    dst = geometry.axis_affine((2.5, 0.8, 0.7))
    affine = _part(dst, start)
    assert geometry.subgrid_placement(shape, affine, (20, 6, 10), dst) is None
    with pytest.raises(MsdnError, match="not the input's grid") as err:
        geometry.map_to_grid(np.zeros(shape, np.uint8), affine, (20, 6, 10), dst, subgrid=True)
    assert err.value.code.value == "reference_mismatch"
