"""Generator version 5 (full-size chest series) and version 4 staying reproducible."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from model_export.data.manifest import load_manifest
from model_export.data.synth import GENERATOR_VERSION, chest, generate, generate_case
from model_export.data.synth.lung import DENSITIES, POSITIONS, SHAPES

SMALL = dict(size=128, slices=24)

#: sha256 (first 16 hex digits) of image and mask bytes of case 3, seed 7, 128 x 128 x 12, computed with
#: the generator before version 5 existed (main at f2388b2): version 4 must keep giving these bytes.
V4_HASHES = {
    "lung": ("58f41d0375dced9e", "550a469ae443e373"),
    "cochlea": ("44e5783748fd7133", "764c1b27e2b41c3d"),
}


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(a.tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("task", ["lung", "cochlea"])
def test_version_4_is_unchanged(task):
    case = generate_case(task, 3, seed=7, size=128, slices=12, version=4)
    assert (_sha(case.image), _sha(case.mask)) == V4_HASHES[task]


def test_cochlea_is_the_same_in_both_versions():
    a = generate_case("cochlea", 1, seed=2, size=128, slices=12, version=4)
    b = generate_case("cochlea", 1, seed=2, size=128, slices=12, version=5)
    assert a.image.tobytes() == b.image.tobytes()


@pytest.fixture(scope="module")
def cases():
    # index 5 of seed 0 draws no nodule, index 11 draws 3 (see NODULE_COUNT_P); 0 and 1 draw 2 and 1
    return {i: generate_case("lung", i, seed=0, **SMALL) for i in (0, 1, 5, 11)}


def test_default_version_draws_full_size_series(cases):
    assert GENERATOR_VERSION == 5
    for c in cases.values():
        assert c.shape == (24, 128, 128) and c.image.dtype == np.int16 and c.mask.dtype == np.uint8
        fov = c.spacing[1] * 128
        assert c.spacing[0] == 1.25 and c.spacing[1] == c.spacing[2] and 280 <= fov <= 360
        assert c.meta["kind"] == "full-chest" and c.meta["nodule_count"] == len(c.meta["nodules"])
        # air outside the body in the corners, lung parenchyma somewhere, bone (ribs/spine) somewhere
        assert np.median(c.image[:, :4, :4]) < -900 and (c.image < -750).mean() > 0.1 and c.image.max() > 500
    assert cases[5].meta["nodule_count"] == 0 and not cases[5].mask.any()
    assert cases[11].meta["nodule_count"] >= 2


def test_nodule_metadata_describes_the_mask(cases):
    for c in cases.values():
        covered = np.zeros(c.mask.shape, bool)
        for n in c.meta["nodules"]:
            assert n["position"] in POSITIONS and n["shape"] in SHAPES and n["density"] in DENSITIES
            assert 3.0 <= n["diameter_mm"] <= 30.0 and n["label"] == 1
            x1, y1, z1, x2, y2, z2 = n["box3d"]
            assert c.mask[z1:z2, y1:y2, x1:x2].any()
            # the box is tight: its border slices/rows/columns hold mask voxels
            sub = c.mask[z1:z2, y1:y2, x1:x2]
            assert sub[0].any() and sub[-1].any() and sub[:, 0].any() and sub[:, :, -1].any()
            cz, cy, cx = n["centre_voxel"]
            assert z1 - 1 <= cz <= z2 and y1 - 1 <= cy <= y2 and x1 - 1 <= cx <= x2
            covered[z1:z2, y1:y2, x1:x2] = True
        assert np.all(covered[c.mask > 0])
        # nodules do not touch: at most one box holds each 3D component's bulk
        comps, n = ndimage.label(c.mask, structure=np.ones((3, 3, 3)))
        sizes = ndimage.sum(c.mask, comps, range(1, n + 1)) if n else []
        assert sum(s >= 8 for s in sizes) <= len(c.meta["nodules"])


def test_version_5_is_deterministic_and_slices_are_drawn_when_not_given():
    a = generate_case("lung", 2, seed=3, **SMALL)
    b = generate_case("lung", 2, seed=3, **SMALL)
    assert a.image.tobytes() == b.image.tobytes() and a.meta == b.meta
    drawn = chest.make_case(np.random.default_rng(0), size=128)
    assert chest.SLICES_RANGE[0] <= drawn.shape[0] <= chest.SLICES_RANGE[1]


def test_manifest_of_version_5(tmp_path: Path):
    path = generate("lung", tmp_path, num_cases={"train": 2, "val": 1}, seed=0, boxes=True, workers=1, **SMALL)
    raw = json.loads(path.read_text())
    assert raw["generator"]["version"] == 5 and "0-4 lung nodules" in raw["description"]
    m = load_manifest(path)
    assert [len(c["meta"]["nodules"]) for c in raw["cases"]] == [
        generate_case("lung", i, seed=0, **SMALL).meta["nodule_count"] for i in range(3)
    ]
    for case, entry in zip(m.cases, raw["cases"], strict=True):
        assert case.strong
        slices = {b["slice"] for b in entry.get("boxes", [])}
        zs = {z for n in entry["meta"]["nodules"] for z in range(n["box3d"][2], n["box3d"][5])}
        assert slices <= zs


def test_a_weak_case_without_target_is_accepted(tmp_path: Path):
    from model_export.data.manifest import parse_manifest

    m = parse_manifest({"cases": [{"id": "a", "split": "train", "image": "a.nii.gz", "boxes": []}]}, root=tmp_path)
    assert not m.cases[0].strong and m.cases[0].boxes == []
