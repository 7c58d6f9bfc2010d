"""service.pipeline as another router would use it: pydicom datasets in, result and DICOM SEG out."""

from __future__ import annotations

import io
import json

import highdicom as hd
import numpy as np
import pydicom
import pytest

from service.errors import InvalidInput
from service.model import ModelRuntime
from service.outputs.dicom_seg import build_seg
from service.pipeline import render, segment_datasets
from tests.service.helpers import THRESHOLD_HU, make_settings
from tests.support.dicom_series import ct_series, phantom, to_bytes
from tests.support.onnx_models import expected_labels


@pytest.fixture(scope="module")
def runtime(model_1c):
    return ModelRuntime.load(model_1c, providers=["CPUExecutionProvider"])


def test_datasets_to_result_and_seg(runtime, model_1c):
    settings = make_settings(model_1c)
    hu = phantom((4, 32, 32))
    datasets = [pydicom.dcmread(io.BytesIO(to_bytes(d))) for d in ct_series(hu)][::-1]
    reference = expected_labels(hu, (THRESHOLD_HU,))
    reference[0] = 0  # the reference misses the first slice's foreground
    result = segment_datasets(datasets, runtime, settings, reference=reference)
    np.testing.assert_array_equal(result.labels, expected_labels(hu, (THRESHOLD_HU,)))
    p, r = result.labels.sum(), reference.sum()
    assert result.metrics["classes"][0]["dice"] == pytest.approx(2 * r / (p + r))
    seg = build_seg(result)
    assert isinstance(seg, hd.seg.Segmentation)
    uids = result.image.series.sop_instance_uids
    back = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    np.testing.assert_array_equal(back, result.labels)
    body, media_type, _ = render(result, "json", settings)
    assert media_type == "application/json" and json.loads(body)["metrics"]["classes"][0]["dice"] is not None


def test_boxes_and_mode_checks(runtime, model_1c):
    settings = make_settings(model_1c)
    datasets = ct_series(phantom((2, 32, 32)))
    with pytest.raises(InvalidInput, match="does not use boxes"):
        segment_datasets(datasets, runtime, settings, mode="slices", boxes='[{"slice": 0, "box": [0, 0, 4, 4]}]')
    result = segment_datasets(
        ct_series(phantom((2, 32, 32))), runtime, settings, boxes='[{"slice": 1, "box": [0, 0, 4, 4]}]'
    )
    assert result.mode == "boxes" and not result.labels[0].any()
