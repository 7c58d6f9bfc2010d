"""Shape painting, noise and HU helpers of the generator, checked against closed-form values."""

from __future__ import annotations

import numpy as np
import pytest

from model_export.data.synth.common import (
    SynthCase,
    blend,
    case_rng,
    ellipsoid,
    paint_capsules,
    rotation_matrix,
    scanner,
    smooth_noise,
    to_hu_int16,
)

SPACING = (0.5, 0.5, 0.5)


def test_capsule_occupancy_profile_and_volume():
    field = np.zeros((40, 40, 80), np.float32)
    # a capsule along x through the grid centre, radius 4 mm, length 20 mm
    a, b = np.array([10.0, 10.0, 10.0]), np.array([10.0, 10.0, 30.0])
    paint_capsules(field, SPACING, a[None], b[None], 4.0, 4.0, edge=0.5)
    iz, iy = 20, 20  # voxel (20, 20) is at 10 mm, 10 mm
    assert field[iz, iy, 40] == 1.0  # on the axis
    assert field[iz, iy + 8, 40] == pytest.approx(0.5)  # exactly at the radius (4 mm = 8 voxels)
    assert field[iz, iy + 9, 40] == 0.0  # 0.5 mm outside
    assert field[iz, iy + 7, 40] == 1.0
    volume = field.sum() * 0.125
    expected = np.pi * 4**2 * 20 + 4 / 3 * np.pi * 4**3
    assert volume == pytest.approx(expected, rel=0.02)


def test_tapered_capsule_and_max_painting():
    field = np.zeros((20, 20, 60), np.float32)
    paint_capsules(field, SPACING, [[5.0, 5.0, 5.0]], [[5.0, 5.0, 25.0]], 3.0, 1.0, edge=0.5)
    # radius at the middle (x = 15 mm) is 2 mm: 4 voxels out is the surface
    assert field[10, 14, 30] == pytest.approx(0.5)
    before = field.copy()
    paint_capsules(field, SPACING, [[5.0, 5.0, 5.0]], [[5.0, 5.0, 25.0]], 0.5, 0.5, edge=0.5)
    np.testing.assert_array_equal(field, before)  # a thinner capsule inside changes nothing (max)
    # segments fully outside the grid are skipped
    paint_capsules(field, SPACING, [[100.0, 100, 100]], [[120.0, 100, 100]], 2.0, 2.0, edge=0.5)
    np.testing.assert_array_equal(field, before)


def test_ellipsoid_volume_and_axes():
    field = np.zeros((60, 60, 60), np.float32)
    rot = rotation_matrix(np.random.default_rng(3))
    ellipsoid(field, SPACING, (15.0, 15.0, 15.0), rot, (9.0, 6.0, 4.0), edge=0.5)
    assert field.sum() * 0.125 == pytest.approx(4 / 3 * np.pi * 9 * 6 * 4, rel=0.03)
    # along the longest axis (rot[0]): inside at 8 mm, outside at 10 mm
    inside = (np.array([15.0, 15.0, 15.0]) + 8.0 * rot[0]) / 0.5
    assert field[tuple(np.round(inside).astype(int))] == 1.0
    outside = (np.array([15.0, 15.0, 15.0]) + 10.0 * rot[0]) / 0.5
    assert field[tuple(np.round(outside).astype(int))] == 0.0


def test_rotation_matrix_is_a_rotation():
    r = rotation_matrix(np.random.default_rng(0))
    np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(r) == pytest.approx(1.0)


def test_smooth_noise_is_unit_and_correlated():
    n = smooth_noise(np.random.default_rng(0), (8, 64, 64), (0.0, 2.0, 2.0))
    assert n.dtype == np.float32 and n.std() == pytest.approx(1.0, rel=1e-4)
    lag1 = np.corrcoef(n[:, :, :-1].ravel(), n[:, :, 1:].ravel())[0, 1]
    lag_z = np.corrcoef(n[:-1].ravel(), n[1:].ravel())[0, 1]
    # Gaussian smoothing with sigma s correlates neighbours by exp(-1 / (4 s^2)) = 0.939 for s = 2;
    # slices are filtered independently (sigma_z = 0): no correlation beyond sampling error
    assert lag1 == pytest.approx(np.exp(-1 / 16), abs=0.02) and abs(lag_z) < 0.15


def test_scanner_noise_level_and_blur():
    rng = np.random.default_rng(0)
    flat = np.full((8, 96, 96), -850.0, np.float32)
    out = scanner(rng, flat, (1.25, 0.6, 0.6), psf_mm=(0.5, 0.5), noise_hu=40.0)
    assert out.mean() == pytest.approx(-850, abs=1.0) and out.std() == pytest.approx(40.0, rel=0.02)
    step = np.zeros((4, 32, 32), np.float32)
    step[:, :, 16:] = 1000.0
    out = scanner(rng, step, (1.0, 0.5, 0.5), psf_mm=(1.0, 0.5), noise_hu=0.0)
    # an edge blurred by a Gaussian of sigma 2 px: half height at the edge, ~16% one sigma away
    assert out[2, 16, 15] + out[2, 16, 16] == pytest.approx(1000.0, abs=1.0)
    assert out[2, 16, 14] == pytest.approx(1000 * (1 - 0.5 * (1 + 0.5205)), abs=60)


def test_blend_is_partial_volume_mixing():
    img = np.full((1, 1, 3), -1000.0, np.float32)
    blend(img, np.array([[[0.0, 0.5, 1.0]]], np.float32), 40.0)
    np.testing.assert_allclose(img[0, 0], [-1000.0, -480.0, 40.0])


def test_to_hu_int16_rounds_and_clips():
    out = to_hu_int16(np.array([-5000.0, -1000.4, 0.6, 4000.0]))
    assert out.dtype == np.int16 and out.tolist() == [-1024, -1000, 1, 3071]


def test_case_rng_streams():
    a = case_rng(0, 1, 5).random(4)
    np.testing.assert_array_equal(a, case_rng(0, 1, 5).random(4))
    assert not np.array_equal(a, case_rng(0, 2, 5).random(4)) and not np.array_equal(a, case_rng(1, 1, 5).random(4))


def test_ras_affine_maps_voxels_to_dicom_positions_flipped():
    zeros = np.zeros((3, 4, 5), np.int16)
    case = SynthCase(zeros, zeros.astype(np.uint8), (1.25, 0.6, 0.7), (-10.0, -20.0, -5.0))
    aff = case.ras_affine()
    # voxel (x=2, y=1, z=2) in LPS is (-10 + 2*0.7, -20 + 1*0.6, -5 + 2*1.25); RAS flips x and y
    lps = np.array([-10 + 1.4, -20 + 0.6, -5 + 2.5])
    np.testing.assert_allclose(aff @ [2, 1, 2, 1], [-lps[0], -lps[1], lps[2], 1.0])
