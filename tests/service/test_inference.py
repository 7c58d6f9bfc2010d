"""service.inference with real ONNX Runtime sessions of the threshold models."""

from __future__ import annotations

import numpy as np
import pytest

from service.boxes import SliceBox
from service.inference import argmax_labels, segment_boxes, segment_slices, segment_volume_array
from service.model import ModelRuntime
from tests.service.helpers import CLIP_2C, THRESHOLD_HU, THRESHOLDS_2C
from tests.support.dicom_series import phantom
from tests.support.onnx_models import conv_model, expected_labels


@pytest.fixture(scope="module")
def rt1(model_1c):
    return ModelRuntime.load(model_1c, providers=["CPUExecutionProvider"], batch_size=4)


@pytest.fixture(scope="module")
def rt2(model_2c):
    return ModelRuntime.load(model_2c, providers=["CPUExecutionProvider"], batch_size=4)


@pytest.fixture(scope="module")
def rtdet(model_det):
    return ModelRuntime.load(model_det, providers=["CPUExecutionProvider"], batch_size=4)


def test_normalise_clips_then_standardises(rt2):
    x = np.array([-5000.0, -200.0, 400.0, 5000.0])
    np.testing.assert_allclose(rt2.card.input.normalise(x), [(-1000 + 200) / 300, 0.0, 2.0, (1000 + 200) / 300])


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_argmax_labels_equals_numpy_argmax_including_ties(channels):
    rng = np.random.default_rng(0)
    probs = rng.integers(0, 3, size=(3, channels, 9, 7)).astype(np.float32)  # many ties
    np.testing.assert_array_equal(argmax_labels(probs), probs.argmax(axis=1))
    assert argmax_labels(probs).dtype == np.uint8


def test_whole_slices_of_an_odd_size_are_padded_and_cut_back(rt1):
    volume = phantom((9, 37, 53))  # not multiples of 16; 9 slices -> 3 batches of 4
    labels, stats, _ = segment_slices(rt1, volume.astype(np.float32))
    np.testing.assert_array_equal(labels, expected_labels(volume, (THRESHOLD_HU,)))
    assert (stats.calls, stats.items) == (3, 9)


def test_two_classes_with_clipping(rt2):
    volume = phantom((3, 32, 40))
    volume[0, :2, :2] = 3000.0  # clipped to 1000 -> still class 2
    labels, _, _ = segment_slices(rt2, volume.astype(np.float32))
    np.testing.assert_array_equal(labels, expected_labels(volume, THRESHOLDS_2C, CLIP_2C))
    assert set(np.unique(labels)) == {0, 1, 2}


def test_boxes_segment_only_inside_each_box(rt1):
    volume = phantom((4, 48, 64)).astype(np.float32)
    full = expected_labels(volume, (THRESHOLD_HU,))
    boxes = [
        SliceBox(1, 10.0, 12.0, 30.0, 30.0),
        SliceBox(3, 40.5, 20.2, 63.0, 47.9),
    ]  # second touches the border
    labels, stats = segment_boxes(rt1, volume, boxes)
    expected = np.zeros_like(full)
    expected[1, 12:30, 10:30] = full[1, 12:30, 10:30]
    expected[3, 20:48, 40:63] = full[3, 20:48, 40:63]
    np.testing.assert_array_equal(labels, expected)
    assert stats.items == 2 and stats.calls == 1  # both crops 32 x 32 -> one batch


def test_box_larger_than_the_patch_grows_the_crop(rt1):
    volume = phantom((1, 48, 64)).astype(np.float32)
    labels, _ = segment_boxes(rt1, volume, [SliceBox(0, 0.0, 0.0, 64.0, 48.0)])
    np.testing.assert_array_equal(labels, expected_labels(volume, (THRESHOLD_HU,)))


def test_box_label_keeps_only_that_class(rt2):
    volume = phantom((2, 48, 64)).astype(np.float32)
    full = expected_labels(volume, THRESHOLDS_2C, CLIP_2C)
    labels, _ = segment_boxes(rt2, volume, [SliceBox(0, 0.0, 0.0, 64.0, 48.0, label=2)])
    np.testing.assert_array_equal(labels[0], np.where(full[0] == 2, 2, 0))
    assert not labels[1].any()


def test_overlapping_boxes_keep_the_first_foreground_label(rt2):
    volume = phantom((1, 48, 64)).astype(np.float32)
    full = expected_labels(volume, THRESHOLDS_2C, CLIP_2C)
    boxes = [SliceBox(0, 0.0, 0.0, 64.0, 48.0, label=2), SliceBox(0, 0.0, 0.0, 64.0, 48.0)]
    labels, _ = segment_boxes(rt2, volume, boxes)
    np.testing.assert_array_equal(labels, full)  # the unlabelled box fills in class 1 where class 2 is absent


def test_proposals_from_the_detector(rtdet):
    volume = np.full((2, 32, 48), -500.0, np.float32)
    volume[0, 3:6, 10:13] = 100.0  # in cell (row 0, col 1)
    volume[1, 20:22, 40:47] = 100.0  # in cell (row 2, col 5)
    out = segment_volume_array(rtdet, volume, mode="proposals")
    assert out.mode == "proposals"
    # two 3D candidates of one slice each (IoU 0: not linked), grown by 4 pixels and 1 slice, cut to the volume
    assert sorted(c.box3d for c in out.candidates) == [[8, 0, 0, 16, 8, 1], [40, 16, 1, 48, 24, 2]]
    assert sorted(out.candidate_boxes) == [[4, 0, 0, 20, 12, 2], [36, 12, 0, 48, 28, 2]]
    assert sorted((b.slice, b.xyxy, b.label) for b in out.boxes) == [
        (0, [4, 0, 20, 12], 1),
        (0, [36, 12, 48, 28], 1),
        (1, [4, 0, 20, 12], 1),
        (1, [36, 12, 48, 28], 1),
    ]
    assert all(b.score == pytest.approx(1.0, abs=1e-3) and b.source == "detector" for b in out.boxes)
    np.testing.assert_array_equal(out.labels, expected_labels(volume, (THRESHOLD_HU,)))
    # one whole-slice batch, then one batch of the 4 crops (all 32 x 32)
    assert out.stats.calls == 2 and out.stats.items == 6
    tight = segment_volume_array(rtdet, volume, mode="proposals", box_margin=0, z_margin=0)
    assert sorted((b.slice, b.xyxy) for b in tight.boxes) == [(0, [8, 0, 16, 8]), (1, [40, 16, 48, 24])]


def test_whole_slices_keep_the_foreground_probability(rt1):
    volume = np.full((1, 16, 16), -500.0, np.float32)
    volume[0, 2:4, 2:4] = 100.0  # normalised 1: p = sigmoid(20) -> 255
    volume[0, 8, 8] = 0.0  # at the threshold: p = 0.5 -> 128 (0.5 x 255 = 127.5 rounds to even)
    out = segment_volume_array(rt1, volume, mode="slices")
    assert out.score_volume is not None and out.score_volume.dtype == np.uint8
    assert out.score_volume[0, 2, 2] == 255 and out.score_volume[0, 8, 8] == 128 and out.score_volume[0, 0, 0] == 0


def test_mode_choice(rt1, rtdet):
    volume = phantom((1, 32, 32)).astype(np.float32)
    assert segment_volume_array(rt1, volume).mode == "slices"
    assert segment_volume_array(rtdet, volume, mode="slices").mode == "slices"
    assert segment_volume_array(rt1, volume, boxes=[SliceBox(0, 0, 0, 4, 4)]).mode == "boxes"
    with pytest.raises(ValueError, match="detection outputs"):
        segment_volume_array(rt1, volume, mode="proposals")
    # auto: an uncalibrated detector runs whole slices, unless told to use proposals
    assert segment_volume_array(rtdet, volume).mode == "slices"
    assert segment_volume_array(rtdet, volume, auto_proposals=True).mode == "proposals"
    assert segment_volume_array(rt1, volume, auto_proposals=True).mode == "slices"  # no detector


def test_auto_uses_proposals_for_a_calibrated_card(model_det_calibrated):
    rt = ModelRuntime.load(model_det_calibrated, providers=["CPUExecutionProvider"], batch_size=4)
    volume = phantom((1, 32, 32)).astype(np.float32)
    assert rt.card.score_threshold == 0.9
    assert segment_volume_array(rt, volume).mode == "proposals"
    assert segment_volume_array(rt, volume, auto_proposals=False).mode == "slices"


def test_deadline_check_stops_between_batches(rt1):
    calls = []

    def check():
        calls.append(1)
        if len(calls) > 1:
            raise TimeoutError("stop")

    with pytest.raises(TimeoutError):
        segment_slices(rt1, phantom((9, 16, 16)).astype(np.float32), check=check)
    assert len(calls) == 2


def test_a_pixel_budget_changes_the_batches_not_the_result(tmp_path):
    """Whole slices and box crops with and without MSDN_BATCH_MAX_PIXELS: the same labels and
    scores (a 3x3-conv model, where batch composition could matter), batches as computed by hand."""
    path = tmp_path / "conv.onnx"
    conv_model(path, channels=8, layers=2, patch_size=(32, 32))
    free = ModelRuntime.load(path, providers=["cpu"], batch_size=8, batch_max_pixels=0)
    budget = ModelRuntime.load(path, providers=["cpu"], batch_size=8, batch_max_pixels=2 * 64 * 64)
    volume = np.random.default_rng(5).normal(0.0, 300.0, (9, 64, 64)).astype(np.float32)
    out_free = segment_volume_array(free, volume, mode="slices")
    out_budget = segment_volume_array(budget, volume, mode="slices")
    np.testing.assert_array_equal(out_budget.labels, out_free.labels)
    np.testing.assert_array_equal(out_budget.score_volume, out_free.score_volume)
    assert (out_free.stats.calls, out_budget.stats.calls) == (2, 5)  # 8 + 1 slices; 2 + 2 + 2 + 2 + 1
    assert 0 < out_free.labels.mean() < 1
    boxes = [SliceBox(z, 4, 4, 20, 20) for z in range(9)]  # 9 crops of 32x32: 8192 // 1024 = 8 per call
    b_free = segment_volume_array(free, volume, boxes=boxes)
    b_budget = segment_volume_array(budget, volume, boxes=boxes)
    np.testing.assert_array_equal(b_budget.labels, b_free.labels)
    assert b_free.stats.calls == b_budget.stats.calls == 2
