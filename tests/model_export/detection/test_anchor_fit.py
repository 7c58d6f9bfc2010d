"""Anchor fitting and anchor recall: hand values, and the recall on generator-v5 training boxes."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from model_export.data.sampling import label_objects, object_slice_boxes
from model_export.data.synth import generate_case
from model_export.detection.anchor_fit import anchor_recall, best_anchor_iou, fit_anchor_shapes
from model_export.detection.anchors import cell_anchors, grid_anchors, shape_anchors, shifted_anchors

logger = logging.getLogger(__name__)


def test_shape_anchors_and_shifted_grid_match_the_scale_ratio_grid():
    base = shape_anchors([(4, 4), (2, 6, 0.5, -0.5)])
    torch.testing.assert_close(base, torch.tensor([[-2.0, -2.0, 2.0, 2.0], [-0.5, -3.5, 1.5, 2.5]]))
    cells = cell_anchors(8.0, (1.0, 2.0), (0.5, 1.0))
    torch.testing.assert_close(shifted_anchors(3, 2, 4, cells), grid_anchors(3, 2, 4, 8.0, (1.0, 2.0), (0.5, 1.0)))


def test_best_anchor_iou_by_hand():
    boxes = np.array([[0, 0, 4, 4], [0, 0, 2, 2], [4, 4, 7, 7]], dtype=np.float32)
    # stride 4, one 4x4 anchor: cell (0, 0) is exactly box 0; box 1 (2x2) inside it: 4/16; box 2 (3x3 at 4..7)
    # against the anchor of cell (1, 1) = [4, 4, 8, 8]: 9/16
    iou = best_anchor_iou(boxes, strides=[4], cell_anchors=[shape_anchors([(4, 4)])])
    np.testing.assert_allclose(iou, [1.0, 0.25, 9 / 16])
    # stride 1, a centred 2x2 anchor is half a pixel off a 2x2 box: 1.5^2 / (8 - 1.5^2); shifted: exact
    centred = best_anchor_iou(boxes[1:2], strides=[1], cell_anchors=[shape_anchors([(2, 2)])])
    np.testing.assert_allclose(centred, [2.25 / 5.75])
    shifted = best_anchor_iou(boxes[1:2], strides=[1], cell_anchors=[shape_anchors([(2, 2, -0.5, -0.5)])])
    np.testing.assert_allclose(shifted, [1.0])
    assert anchor_recall(boxes, strides=[4], cell_anchors=[shape_anchors([(4, 4)])]) == pytest.approx(2 / 3)
    assert np.isnan(anchor_recall(np.zeros((0, 4)), strides=[4], cell_anchors=[shape_anchors([(4, 4)])]))


def test_fit_picks_the_hand_expected_anchors():
    rng = np.random.default_rng(0)
    xy = rng.integers(0, 100, (60, 2)).astype(np.float32)
    small = np.concatenate([xy[:30], xy[:30] + 2], axis=1)  # 2x2 boxes anywhere (even size)
    big = np.concatenate([xy[30:] * 0 + 36, xy[30:] * 0 + 52], axis=1)  # 16x16 boxes centred on a stride-8 cell
    fit = fit_anchor_shapes(np.concatenate([small, big]), strides=[8, 1], per_level=1)
    assert fit[0] == ((16.0, 16.0, 0.0, 0.0),)
    # a 2x2 box sits on a pixel corner: a centred 2x2 anchor reaches IoU 0.39, one shifted by half a pixel
    # along one axis 2 * 1.5 / (8 - 3) = 0.6 (the first such candidate wins the tie)
    ((w, h, dx, dy),) = fit[1]
    assert (w, h) == (2.0, 2.0) and (dx, dy) == (-0.5, 0.0)
    cells = [shape_anchors(level) for level in fit]
    assert anchor_recall(np.concatenate([small, big]), strides=[8, 1], cell_anchors=cells) == 1.0


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="positive width"):
        fit_anchor_shapes(np.array([[0, 0, 0, 3]]), strides=[1], per_level=1)
    with pytest.raises(ValueError, match="per_level"):
        fit_anchor_shapes(np.array([[0, 0, 2, 3]]), strides=[1], per_level=0)


def test_anchor_recall_on_full_size_training_boxes():
    boxes = []
    for i in range(6):
        c = generate_case("lung", i, seed=0, size=128, slices=24)
        objects, classes = label_objects(c.mask)
        boxes += [b for b, _ in object_slice_boxes(objects, classes).values()]
    boxes = np.concatenate(boxes)
    strides = (8, 4, 2, 1)
    fit = fit_anchor_shapes(boxes, strides=strides, per_level=3)
    fitted = anchor_recall(boxes, strides=strides, cell_anchors=[shape_anchors(level) for level in fit])
    preset = anchor_recall(
        boxes,
        strides=strides,
        cell_anchors=[cell_anchors(4.0 * s, (1.0, 2 ** (1 / 3), 2 ** (2 / 3)), (0.5, 1.0, 2.0)) for s in strides],
    )
    logger.info("anchor recall at IoU 0.5 on %d boxes: fitted %.3f, preset %.3f", len(boxes), fitted, preset)
    print(f"anchor recall at IoU 0.5 on {len(boxes)} boxes: fitted {fitted:.3f}, preset {preset:.3f}")
    assert fitted >= 0.95 and fitted > preset
