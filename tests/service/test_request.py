"""service.request.run_request: a NIfTI volume in box mode is read only where its boxes lie."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from service.concurrency import Deadline
from service.model import ModelRuntime
from service.request import run_request
from tests.service.helpers import THRESHOLD_HU, make_settings
from tests.support.dicom_series import phantom
from tests.support.onnx_models import expected_labels


@pytest.fixture(scope="module")
def runtime(model_1c):
    return ModelRuntime.load(model_1c, providers=["CPUExecutionProvider"])


def _request(runtime, settings, path, boxes, mode="auto"):
    with open(path, "rb") as fh:
        return run_request(
            Deadline(None),
            runtime=runtime,
            settings=settings,
            dicom=[],
            volume=(path.name, fh),
            spacing=None,
            boxes=boxes,
            reference=None,
            series_uid=None,
            mode=mode,
        )


def test_box_mode_reads_the_boxes_slices_and_the_whole_volume_otherwise(runtime, model_1c, tmp_path):
    hu = phantom((7, 40, 48))
    path = tmp_path / "ct.nii"
    nib.Nifti1Image(hu.transpose(2, 1, 0).astype(np.int16), np.diag([0.7, 0.7, 2.5, 1.0])).to_filename(path)
    settings = make_settings(model_1c)
    boxes = json.dumps([{"slice": 5, "box": [4, 6, 30, 28]}, {"box": [10, 10, 1, 40, 30, 3]}])
    result = _request(runtime, settings, path, boxes)
    assert result.mode == "boxes" and result.image.decoded.tolist() == [1, 2, 5]
    full = expected_labels(hu, (THRESHOLD_HU,))
    expected = np.zeros_like(full)
    expected[5, 6:28, 4:30] = full[5, 6:28, 4:30]
    expected[1:3, 10:30, 10:40] = full[1:3, 10:30, 10:40]
    np.testing.assert_array_equal(result.labels, expected)
    whole = _request(runtime, settings, path, None, mode="slices")
    assert whole.image.decoded is None
    np.testing.assert_array_equal(whole.labels, full)
