"""The bundled sample (samples/) is what the documented ``msdn synth`` command makes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from model_export.data.manifest import boxes_from_mask
from model_export.data.synth import generate
from model_export.data.volumes import read_volume

SAMPLES = Path(__file__).resolve().parents[4] / "samples"


@pytest.mark.skipif(not (SAMPLES / "chest_case").is_dir(), reason="samples/ not in this checkout")
def test_sample_matches_the_generator(tmp_path: Path):
    manifest = generate("lung", tmp_path, num_cases={"train": 1}, seed=6, size=256, slices=40, dicom=True, version=5)
    made = manifest.parent / "dicom" / "lung_000"
    committed = sorted((SAMPLES / "chest_case").iterdir())
    assert [p.name for p in committed] == sorted(p.name for p in made.iterdir())
    for p in committed:
        a, b = pydicom.dcmread(p), pydicom.dcmread(made / p.name)
        assert (a.SOPInstanceUID, a.SeriesInstanceUID, a.ImagePositionPatient) == (
            b.SOPInstanceUID,
            b.SeriesInstanceUID,
            b.ImagePositionPatient,
        )
    image = read_volume(SAMPLES / "chest_case")
    mask = read_volume(SAMPLES / "chest_case_mask.nii.gz", dtype=np.uint8)
    # Same environment: identical. Other numpy/scipy builds may round a few float32 voxels differently,
    # so allow a handful of voxels off by one HU / one mask voxel rather than demanding equal bytes.
    remade = read_volume(made)
    assert np.mean(image.array != remade.array) < 1e-3 and np.abs(image.array - remade.array).max() <= 1
    remade_mask = read_volume(manifest.parent / "masks" / "lung_000.nii.gz", dtype=np.uint8).array
    assert np.sum(mask.array != remade_mask) <= 3
    assert image.shape == mask.shape == (40, 256, 256)
    np.testing.assert_allclose(image.affine, mask.affine, atol=1e-3)  # DICOM origins carry 2 decimals
    # the numbers quoted in samples/README.md
    meta = json.loads(manifest.read_text())["cases"][0]["meta"]
    assert [(n["position"], n["box3d"]) for n in meta["nodules"]] == [
        ("isolated", [96, 136, 27, 106, 145, 38]),
        ("juxta-pleural", [29, 92, 12, 46, 102, 29]),
    ]
    assert int(mask.array.sum()) == 951
    slice_boxes = [(b.z, b.box, b.label) for b in boxes_from_mask(mask.array)]
    assert (32, (96.0, 136.0, 106.0, 145.0), 1) in slice_boxes and (20, (33.0, 92.0, 41.0, 102.0), 1) in slice_boxes
    assert str(pydicom.dcmread(committed[0]).PatientName) == "SYNTHETIC^SYNTH-LUNG_000"
    assert sum(p.stat().st_size for p in committed) < 6_000_000
