"""The bundled sample (samples/) is what the documented ``msdn synth`` command makes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from model_export.data.manifest import boxes_from_mask
from model_export.data.synth import generate
from model_export.data.volumes import read_volume

SAMPLES = Path(__file__).resolve().parents[4] / "samples"


@pytest.mark.skipif(not (SAMPLES / "lung_case").is_dir(), reason="samples/ not in this checkout")
def test_sample_matches_the_generator(tmp_path: Path):
    manifest = generate("lung", tmp_path, num_cases={"train": 1}, seed=22, size=128, slices=20, dicom=True)
    made = manifest.parent / "dicom" / "lung_000"
    committed = sorted((SAMPLES / "lung_case").iterdir())
    assert [p.name for p in committed] == sorted(p.name for p in made.iterdir())
    for p in committed:
        a, b = pydicom.dcmread(p), pydicom.dcmread(made / p.name)
        assert (a.SOPInstanceUID, a.SeriesInstanceUID, a.ImagePositionPatient) == (
            b.SOPInstanceUID,
            b.SeriesInstanceUID,
            b.ImagePositionPatient,
        )
    image = read_volume(SAMPLES / "lung_case")
    mask = read_volume(SAMPLES / "lung_case_mask.nii.gz", dtype=np.uint8)
    # Same environment: identical. Other numpy/scipy builds may round a few float32 voxels differently,
    # so allow a handful of voxels off by one HU / one mask voxel rather than demanding equal bytes.
    remade = read_volume(made)
    assert np.mean(image.array != remade.array) < 1e-3 and np.abs(image.array - remade.array).max() <= 1
    remade_mask = read_volume(manifest.parent / "masks" / "lung_000.nii.gz", dtype=np.uint8).array
    assert np.sum(mask.array != remade_mask) <= 3
    assert image.shape == mask.shape == (20, 128, 128)
    np.testing.assert_allclose(image.affine, mask.affine, atol=1e-4)
    # the numbers quoted in samples/README.md
    z, y, x = np.nonzero(mask.array)
    assert [x.min(), y.min(), z.min(), x.max() + 1, y.max() + 1, z.max() + 1] == [39, 34, 4, 61, 54, 13]
    assert int(mask.array.sum()) == 2097
    assert (8, (39.0, 34.0, 61.0, 54.0), 1) in [(b.z, b.box, b.label) for b in boxes_from_mask(mask.array)]
    assert str(pydicom.dcmread(committed[0]).PatientName) == "SYNTHETIC^SYNTH-LUNG_000"
    assert sum(p.stat().st_size for p in committed) < 2_000_000
