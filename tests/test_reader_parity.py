"""Parity: a series read for training (``model_export.data.volumes``) and for serving (``service.io``) is identical.

Both go through :mod:`msdn_core.readers`; these tests pin that no second path creeps back in: the same
files give the same array (bit for bit), the same affine and the same spacing, for the bundled sample,
pydicom's JPEG 2000 CT, an RLE-compressed series and a gantry-tilted one.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.uid import RLELossless

from model_export.data.volumes import read_volume
from service.io.dicom import parse_dicom, series_volume
from tests.service.helpers import make_settings
from tests.support.dicom_series import ct_series, phantom, to_bytes

ROOT = Path(__file__).resolve().parents[1]


def _serve(folder: Path):
    settings = make_settings(ROOT / "models" / "default.onnx")
    items = [(p.name, parse_dicom(p.read_bytes(), name=p.name)) for p in sorted(folder.iterdir())]
    return series_volume(items, settings=settings)


def _tilted(folder: Path) -> None:
    datasets = ct_series(phantom((4, 24, 24)), spacing=(2.5, 0.75, 0.75))
    for z, ds in enumerate(datasets):
        ds.ImagePositionPatient = [float(v) for v in np.asarray(ds.ImagePositionPatient, float) + [0, z * 0.5, 0]]
        (folder / f"{z}.dcm").write_bytes(to_bytes(ds))


def _rle(folder: Path) -> None:
    for z, ds in enumerate(ct_series(phantom((3, 20, 24)), transfer_syntax=RLELossless)):
        (folder / f"{z}.dcm").write_bytes(to_bytes(ds))


@pytest.mark.parametrize("case", ["sample", "jpeg2000", "rle", "tilted"])
def test_training_and_serving_read_the_same_volume(tmp_path: Path, case: str):
    folder = tmp_path / case
    if case == "sample":
        shutil.copytree(ROOT / "samples" / "chest_case", folder)
    else:
        folder.mkdir()
        if case == "jpeg2000":
            shutil.copy(get_testdata_file("693_J2KI.dcm"), folder / "a.dcm")
        else:
            (_rle if case == "rle" else _tilted)(folder)
    train, serve = read_volume(folder), _serve(folder)
    # Training reads float32; the service keeps integer CT values as int16 until normalisation.
    assert train.array.dtype == np.float32 and serve.array.dtype in (np.float32, np.int16)
    np.testing.assert_array_equal(train.array, serve.array)
    np.testing.assert_array_equal(train.affine, serve.affine)
    assert train.spacing == serve.spacing and train.tilt_deg == serve.tilt_deg
    if case == "tilted":
        assert train.tilt_deg > 5
    if case == "jpeg2000":  # independent path: pydicom's own decode and rescale
        ds = pydicom.dcmread(folder / "a.dcm")
        expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        np.testing.assert_array_equal(train.array[0], expected.astype(np.float32))
