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


def test_proposals_with_slices_equals_a_separate_slices_run(model_det):
    """The whole-slice answer taken from the proposals run matches a slices-mode run of its own."""
    runtime = ModelRuntime.load(model_det, providers=["CPUExecutionProvider"], batch_size=4)
    settings = make_settings(model_det, min_component_mm3=2.0)
    hu = np.full((6, 32, 48), -800.0)
    hu[1:4, 3:7, 3:7] = 200.0  # found by the detector
    hu[2, 20:22, 40:42] = 3.0  # foreground (p 0.65) in whole slices; a 0.65 detection, under a 0.9 threshold
    hu[4, 30, 30] = 200.0  # 1 voxel (1.4 mm^3): removed in both
    settings = settings.model_copy(update={"proposal_score_threshold": 0.9})
    both = segment_datasets(ct_series(hu), runtime, settings, mode="proposals", with_slices=True)
    alone = segment_datasets(ct_series(hu), runtime, settings, mode="slices")  # fresh datasets: pixels are released
    assert both.mode == "proposals" and both.slices.mode == "slices" and alone.slices is None
    np.testing.assert_array_equal(both.slices.labels, alone.labels)
    assert both.slices.components == alone.components
    assert [c["voxels"] for c in alone.components] == [48, 4]
    assert [c["voxels"] for c in both.components] == [48]  # the faint one is no proposal
    # 6 slices in batches of 4, then 5 crops (the candidate's slices 1-3 and one more each side) in 2
    assert both.slices.run.calls == 2 and both.run.calls == 4


def test_confirmation_by_the_segmentation(model_det):
    """Proposal components scored by detection x mean whole-slice foreground probability (by hand)."""
    runtime = ModelRuntime.load(model_det, providers=["CPUExecutionProvider"], batch_size=4)
    hu = np.full((6, 32, 48), -800.0)
    hu[1:4, 3:7, 3:7] = 200.0  # p = 1: detection 1, confirmed 1
    hu[2:4, 20:24, 36:40] = 3.0  # p = sigmoid(20 x 0.03) in both networks (the model's cell maximum)
    p = 1.0 / (1.0 + np.exp(-0.6))
    seg = np.rint(255 * p) / 255  # the uint8 whole-slice probability
    base = make_settings(model_det, min_component_mm3=2.0, proposal_score_threshold=0.4)

    def run(**update):
        settings = base.model_copy(update=update)
        return segment_datasets(ct_series(hu), runtime, settings, mode="proposals").components

    plain = run(proposal_confirmation="none")
    assert [(c["voxels"], round(c["score"], 4)) for c in plain] == [(48, 1.0), (32, round(p, 4))]
    assert all("segmentation_score" not in c for c in plain)
    confirmed = run(proposal_confirmation="segmentation")
    assert [c["voxels"] for c in confirmed] == [48, 32]
    faint = confirmed[1]
    assert faint["detection_score"] == pytest.approx(p, abs=1e-5)
    assert faint["segmentation_score"] == pytest.approx(seg, abs=1e-9)
    assert faint["score"] == pytest.approx(p * seg, abs=1e-5)  # 0.418 >= 0.4: kept
    # at 0.5 the faint candidate (detection 0.646) is segmented but not confirmed (0.418)
    assert [c["voxels"] for c in run(proposal_confirmation="segmentation", proposal_score_threshold=0.5)] == [48]
    assert [c["voxels"] for c in run(proposal_confirmation="none", proposal_score_threshold=0.5)] == [48, 32]
