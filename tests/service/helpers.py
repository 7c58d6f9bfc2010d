"""Constants and helpers shared by the service tests."""

from __future__ import annotations

import glob
import os
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from service.settings import Settings

#: Thresholds (HU) of the test models: class 1 above 0 HU (2-class model: class 2 above 300 HU).
THRESHOLD_HU = 0.0
THRESHOLDS_2C = (0.0, 300.0)
CLIP_2C = (-1000.0, 1000.0)


def make_settings(model: Path, **overrides) -> Settings:
    """Settings ignoring the environment's .env, for a test model.

    No minimum component volume, so masks are exactly the thresholded input.
    """
    values = {
        "model_path": model,
        "intra_op_threads": 1,
        "allowed_modalities": ["CT"],
        "min_component_mm3": 0.0,
        **overrides,
    }
    return Settings(_env_file=None, **values)


def ct5n_paths() -> list[str]:
    """The 5-slice CT series shipped with pydicom (16 x 16, 2.5 mm)."""
    first = get_testdata_file("CT_small.dcm")
    base = os.path.join(os.path.dirname(first), "dicomdirtests", "98892001", "CT5N")
    paths = sorted(glob.glob(os.path.join(base, "*")))
    assert len(paths) == 5
    return paths


def pydicom_file(name: str) -> str:
    path = get_testdata_file(name)
    assert path is not None, name
    return path


def read(path: str) -> pydicom.Dataset:
    return pydicom.dcmread(path)
