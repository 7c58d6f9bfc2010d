"""msdn_core.readers.nrrd: NRRD (pynrrd) into the one Volume (LPS affine), checked against the written header."""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np
import pytest

from msdn_core.errors import MsdnError
from msdn_core.readers import read_path
from msdn_core.readers.nrrd import read_nrrd_bytes


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
