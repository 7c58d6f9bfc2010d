"""service.evaluation against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from msdn_core.metrics import hd95, overlap
from service.evaluation import class_summary, evaluate


def test_dice_iou_by_hand():
    pred = np.zeros((1, 4, 10), bool)
    ref = np.zeros((1, 4, 10), bool)
    pred[0, 0, 0:6] = True  # 6 voxels
    ref[0, 0, 2:10] = True  # 8 voxels, overlap 4
    scores = overlap(pred, ref, (1.0, 1.0, 1.0))
    assert scores["dice"] == pytest.approx(2 * 4 / 14)
    assert scores["iou"] == pytest.approx(4 / 10)


def test_hd95_single_voxels_is_their_distance_in_mm():
    pred = np.zeros((3, 3, 8), bool)
    ref = np.zeros((3, 3, 8), bool)
    pred[1, 1, 1] = True
    ref[1, 1, 4] = True  # 3 columns apart, sx = 0.5 mm
    assert hd95(pred, ref, (2.0, 1.0, 0.5)) == pytest.approx(1.5)
    ref[1, 1, 4], ref[2, 1, 1] = False, True  # one slice apart, sz = 2 mm
    assert hd95(pred, ref, (2.0, 1.0, 0.5)) == pytest.approx(2.0)


def test_hd95_parallel_lines_uses_the_spacing():
    pred = np.zeros((1, 6, 12), bool)
    ref = np.zeros((1, 6, 12), bool)
    pred[0, 1, 1:11] = True
    ref[0, 3, 1:11] = True  # 2 rows apart, sy = 2 mm -> every surface distance is 4 mm
    assert hd95(pred, ref, (1.0, 2.0, 1.0)) == pytest.approx(4.0)


def test_hd95_ignores_the_worst_five_percent():
    pred = np.zeros((1, 3, 120), bool)
    pred[0, 1, 0:100] = True
    ref = pred.copy()
    ref[0, 1, 119] = True  # one far outlier among 101 reference surface voxels
    # directed ref->pred: 100 zeros and 19 mm -> 95th percentile 0 (numpy linear: index 95 of 0..100)
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(0.0)
    # whereas the maximum (plain Hausdorff) would be 19 mm
    ref[0, 1, 100:119] = False
    ref[0, 1, 110:120] = True  # 10 of 110 voxels are 11..20 mm off
    # sorted distances: 100 zeros then 11..20; 95th percentile at index 0.95 * 109 = 103.55 -> 14 + 0.55
    assert hd95(pred, ref, (1.0, 1.0, 1.0)) == pytest.approx(14.55)


def test_empty_masks():
    empty = np.zeros((2, 4, 4), bool)
    some = empty.copy()
    some[0, 1, 1] = True
    assert overlap(empty, empty, (1, 1, 1)) == {"dice": None, "iou": None, "hd95_mm": None}
    assert overlap(some, empty, (1, 1, 1)) == {"dice": 0.0, "iou": 0.0, "hd95_mm": None}


def test_evaluate_per_class_overall_and_volumes():
    pred = np.zeros((2, 4, 5), np.uint8)
    ref = np.zeros((2, 4, 5), np.uint8)
    pred[0, 0, :4] = 1  # 4 voxels of class 1
    ref[0, 0, :2] = 1  # 2 of class 1, overlap 2
    ref[0, 0, 2:4] = 2  # class 2 where pred says 1
    pred[1, 3, 4] = 2
    ref[1, 3, 4] = 2
    result = evaluate(pred, ref, spacing=(2.0, 0.5, 0.5), class_names=["a", "b"])
    c1, c2 = result["classes"]
    assert c1["dice"] == pytest.approx(2 * 2 / 6) and c1["iou"] == pytest.approx(2 / 4)
    assert c2["dice"] == pytest.approx(2 * 1 / 4) and c2["iou"] == pytest.approx(1 / 3)
    assert result["mean_dice"] == pytest.approx((4 / 6 + 2 / 4) / 2)
    assert result["overall"]["dice"] == pytest.approx(1.0)  # foreground matches exactly
    assert result["overall"]["hd95_mm"] == pytest.approx(0.0)
    voxel_ml = 2.0 * 0.5 * 0.5 / 1000
    assert c1["volume_ml"] == pytest.approx(4 * voxel_ml) and c1["reference_volume_ml"] == pytest.approx(2 * voxel_ml)
    assert c2["volume_ml"] == pytest.approx(1 * voxel_ml) and c2["reference_volume_ml"] == pytest.approx(3 * voxel_ml)


def test_class_summary():
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[0:2, 1:3, 1:4] = 1  # 12 voxels
    labels[2, 8, 8] = 1  # 1 voxel, far from the first component
    labels[1, 5:7, 5:7] = 2  # 4 voxels
    summary = class_summary(labels, spacing=(1.0, 1.0, 1.0), class_names=["a", "b"])
    assert [s["voxels"] for s in summary] == [13, 4]
    assert [s["volume_ml"] for s in summary] == pytest.approx([0.013, 0.004])
