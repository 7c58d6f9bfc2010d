"""What the lung and cochlea scenes draw: sizes, HU of tissues, types, where the target is."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from model_export.data.synth import generate_case
from model_export.data.synth.lung import DENSITIES, POSITIONS, SHAPES

N_LUNG = 14  # cases 0..13 of seed 0 at 128 x 128 x 16 cover every density, shape and position
SMALL = dict(size=128, slices=16, version=4)


@pytest.fixture(scope="module")
def lung_cases():
    return [generate_case("lung", i, **SMALL) for i in range(N_LUNG)]


@pytest.fixture(scope="module")
def cochlea_cases():
    return [generate_case("cochlea", i, **SMALL) for i in range(6)]


def _core(mask: np.ndarray) -> np.ndarray:
    core = ndimage.binary_erosion(mask, structure=np.ones((1, 3, 3), bool))
    return core if core.sum() >= 4 else mask.astype(bool)


def test_lung_draws_every_kind(lung_cases):
    for key, values in (("shape", SHAPES), ("density", DENSITIES), ("position", POSITIONS)):
        assert {c.meta[key] for c in lung_cases} == set(values), key


def test_lung_geometry_and_size(lung_cases):
    cap = 0.75 * 15 * 1.25  # diameter cap at 16 slices of 1.25 mm
    for c in lung_cases:
        assert c.shape == (16, 128, 128) and c.spacing[0] == 1.25 and 0.55 <= c.spacing[1] <= 0.7
        assert 3.0 <= c.meta["diameter_mm"] <= cap
        mask = c.mask.astype(bool)
        assert mask.any() and set(np.unique(c.mask)) <= {0, 1}
        # target near the centre in-plane (the trainer crops 128 x 128 around it)
        centroid = np.argwhere(mask).mean(axis=0)
        assert np.all(np.abs(centroid[1:] - 63.5) < 0.3 * 128), c.meta
        # the drawn volume matches the mask, and the size the nodule was drawn with
        voxel = float(np.prod(c.spacing))
        assert c.meta["volume_mm3"] == pytest.approx(mask.sum() * voxel, abs=0.1)
        if c.meta["shape"] == "round" and c.meta["position"] != "juxta-pleural" and c.meta["diameter_mm"] > 6:
            equivalent = (6 * mask.sum() * voxel / np.pi) ** (1 / 3)
            assert equivalent == pytest.approx(c.meta["diameter_mm"], rel=0.2)


def test_lung_hu_by_density(lung_cases):
    for c in lung_cases:
        mask = c.mask.astype(bool)
        inside = np.median(c.image[_core(mask)])
        if c.meta["diameter_mm"] < 5:  # partial volume dominates tiny nodules
            continue
        if c.meta["density"] == "solid":
            assert -150 <= inside <= 120, c.meta
        elif c.meta["density"] == "ground-glass":
            assert -800 <= inside <= -250, c.meta
        else:  # part-solid: a ground-glass halo around a solid core
            values = ndimage.uniform_filter(c.image.astype(np.float32), size=(1, 3, 3))[mask]
            assert values.max() > -150 and values.min() < -300, c.meta


def test_lung_parenchyma_noise_and_body(lung_cases):
    for c in lung_cases:
        lung = c.image[c.image < -500]
        assert -900 <= np.median(lung) <= -760
        # noise: the spread of neighbour differences in the lung matches the drawn noise level
        diff = np.diff(c.image.astype(np.float32), axis=0)[(c.image[1:] < -600) & (c.image[:-1] < -600)]
        sigma = 1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2)
        assert 0.5 * c.meta["noise_hu"] < sigma < 2.5 * c.meta["noise_hu"] + 20, c.meta
        if c.meta["chest_wall"]:
            assert (c.image > 300).sum() > 0 or c.meta["position"] != "juxta-pleural"  # ribs


def test_juxta_pleural_nodules_touch_soft_tissue_outside_the_mask(lung_cases):
    for c in lung_cases:
        if c.meta["position"] != "juxta-pleural":
            continue
        mask = c.mask.astype(bool)
        ring = ndimage.binary_dilation(mask, structure=np.ones((1, 3, 3), bool), iterations=2) & ~mask
        # the chest wall continues the nodule: much of the ring right outside it is soft tissue
        assert np.mean(c.image[ring] > -400) > 0.2, c.meta


def test_lung_mask_is_mostly_one_component(lung_cases):
    for c in lung_cases:
        labels, n = ndimage.label(c.mask, structure=np.ones((3, 3, 3)))
        largest = np.bincount(labels.ravel())[1:].max()
        assert largest >= 0.9 * c.mask.sum(), c.meta


def test_cochlea_anatomy(cochlea_cases):
    assert {c.meta["side"] for c in cochlea_cases} == {"left", "right"}
    for c in cochlea_cases:
        assert c.shape == (16, 128, 128) and c.spacing == (1.0, 0.40625, 0.40625)
        mask = c.mask.astype(bool)
        # one continuous spiral tube, 4+ slices thick, realistic lumen volume
        _, n = ndimage.label(mask, structure=np.ones((3, 3, 3)))
        assert n == 1
        assert mask.any(axis=(1, 2)).sum() >= 4
        assert 30 <= c.meta["volume_mm3"] <= 150
        assert 2.4 <= c.meta["turns"] <= 2.8
        centroid = np.argwhere(mask).mean(axis=0)
        assert np.all(np.abs(centroid[1:] - 63.5) < 0.3 * 128)
        # fluid lumen inside a dense bony wall
        dist = ndimage.distance_transform_edt(~mask, sampling=c.spacing)
        wall = (dist > 0.4) & (dist <= 1.2)
        # (1 mm slices through a 1-2 mm tube: most mask voxels are partly bone, the basal turn least)
        assert np.percentile(c.image[mask], 10) < 500
        assert np.median(c.image[wall]) > 1100
        assert np.median(c.image[wall]) - np.median(c.image[mask]) > 500
        # distractors of the same density exist outside the mask (vestibule, canals, IAC)
        fluid_like = (c.image > -100) & (c.image < 150) & ~ndimage.binary_dilation(mask, iterations=2)
        bone = ndimage.binary_dilation(c.image > 1000, iterations=3)
        assert (fluid_like & bone).sum() > mask.sum()
        # and air (middle ear, canal, mastoid cells)
        assert (c.image < -900).sum() > 1000
