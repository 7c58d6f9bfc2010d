"""msdn_core.proposals: slice boxes linked into 3D candidates, 3D NMS (expectations by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from msdn_core.proposals import (
    Candidate,
    ProposalSettings,
    ScoredBox,
    box3d_iou,
    link_slices,
    merge_detections,
    nms,
    nms_3d,
    select_slice_boxes,
)


def rows(*items):
    return np.array(items, float).reshape(-1, 5)


def summary(cands):
    return [(c.label, c.score, c.box3d, [b.slice for b in c.boxes]) for c in cands]


def test_nms_by_hand():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # box 3 (best) vs 0: IoU 50/100 = 0.5 > 0.3 -> 0 dropped; 1 vs 3: inter 9*4=36, union 50+100-36 -> 0.32 dropped
    assert nms(boxes, scores, 0.3) == [3, 2]
    assert nms(boxes, scores, 0.9) == [3, 0, 1, 2]
    assert nms(boxes, scores, 0.9, max_keep=2) == [3, 0]


def test_only_the_best_boxes_enter_the_nms():
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.1, 0.2, (5000, 1))
    scores[1234, 0] = 0.9
    boxes = np.tile([10.0, 10.0, 20.0, 20.0], (5000, 1)) + rng.uniform(-3, 3, (5000, 4))
    [rows] = select_slice_boxes(scores, boxes, score_threshold=0.1, nms_iou=0.3, max_per_slice=3, pre_nms_top=10)
    # the 10 best of 5000 overlapping boxes enter; the first kept is the 0.9 one
    assert len(rows) <= 3 and rows[0, 4] == 0.9
    np.testing.assert_allclose(rows[0, :4], boxes[1234])
    best10 = np.sort(scores[:, 0])[-10:]
    assert set(rows[:, 4]) <= set(best10)


def test_select_slice_boxes_thresholds_clips_and_orders():
    scores = np.array([[0.9, 0.1], [0.4, 0.8], [0.6, 0.0]])
    boxes = np.array([[-5, 2, 10, 12], [0, 0, 50, 50], [3, 3, 6, 6]], float)
    per_class = select_slice_boxes(
        scores, boxes, score_threshold=0.5, nms_iou=0.3, max_per_slice=2, height=20, width=30
    )
    # class 1: box 0 clipped to [0, 2, 10, 12] (0.9) and box 2 (0.6): IoU 9/100 = 0.09 -> both kept
    np.testing.assert_allclose(per_class[0], [[0, 2, 10, 12, 0.9], [3, 3, 6, 6, 0.6]])
    # class 2: box 1 clipped to the 30 x 20 image
    np.testing.assert_allclose(per_class[1], [[0, 0, 30, 20, 0.8]])
    one = select_slice_boxes(scores, boxes, score_threshold=0.5, nms_iou=0.3, max_per_slice=1)
    np.testing.assert_allclose(one[0], [[-5, 2, 10, 12, 0.9]])


def test_box3d_iou_by_hand():
    # overlap 9 x 10 x 4 = 360; volumes 400 + 400 -> 360 / 440
    assert box3d_iou([0, 0, 0, 10, 10, 4], [1, 0, 0, 11, 10, 4]) == pytest.approx(360 / 440)
    assert box3d_iou([0, 0, 0, 10, 10, 4], [0, 0, 4, 10, 10, 8]) == 0.0  # touching slabs


def test_linking_with_gaps_and_closed_tracks():
    per_slice = [
        (2, rows([10, 10, 20, 20, 0.9])),
        (3, rows([11, 11, 21, 21, 0.7], [40, 40, 50, 50, 0.8])),  # IoU with slice 2: 81/119
        (5, rows([12, 12, 22, 22, 0.6])),  # one empty slice (4): still the first track
        (8, rows([12, 12, 22, 22, 0.3])),  # slices 6 and 7 empty: the first track is closed
    ]
    found = link_slices(per_slice, link_iou=0.2, max_gap=1)
    assert summary(found) == [
        (1, 0.9, [10.0, 10.0, 2.0, 22.0, 22.0, 6.0], [2, 3, 5]),
        (1, 0.8, [40.0, 40.0, 3.0, 50.0, 50.0, 4.0], [3]),
        (1, 0.3, [12.0, 12.0, 8.0, 22.0, 22.0, 9.0], [8]),
    ]
    no_gap = link_slices(per_slice, link_iou=0.2, max_gap=0)
    assert [c.box3d for c in no_gap] == [
        [10.0, 10.0, 2.0, 21.0, 21.0, 4.0],
        [40.0, 40.0, 3.0, 50.0, 50.0, 4.0],
        [12.0, 12.0, 5.0, 22.0, 22.0, 6.0],
        [12.0, 12.0, 8.0, 22.0, 22.0, 9.0],
    ]
    assert [[b.slice for b in c.boxes] for c in link_slices(per_slice, link_iou=0.2, max_gap=1, min_slices=2)] == [
        [2, 3, 5]
    ]
    # an IoU of 81/119 = 0.68 is below 0.7: nothing links
    assert len(link_slices(per_slice, link_iou=0.7, max_gap=1)) == 5


def test_a_track_takes_the_best_box_of_a_slice_only():
    per_slice = [(0, rows([0, 0, 10, 10, 0.5])), (1, rows([0, 0, 10, 10, 0.4], [1, 1, 11, 11, 0.9]))]
    found = link_slices(per_slice, label=2, link_iou=0.2)
    # 0.9 (IoU 81/119 with slice 0) links first; the 0.4 box (IoU 1) finds the track taken
    assert summary(found) == [
        (2, 0.9, [0.0, 0.0, 0.0, 11.0, 11.0, 2.0], [0, 1]),
        (2, 0.4, [0.0, 0.0, 1.0, 10.0, 10.0, 2.0], [1]),
    ]


def test_nms_3d_by_hand():
    def cand(box, score):
        x1, y1, z1, x2, y2, z2 = box
        return Candidate(1, score, [ScoredBox(z, (x1, y1, x2, y2), score) for z in range(z1, z2)])

    a, b, c = cand([0, 0, 0, 10, 10, 4], 0.9), cand([1, 0, 0, 11, 10, 4], 0.8), cand([20, 20, 0, 30, 30, 2], 0.7)
    assert nms_3d([c, b, a], iou_threshold=0.2, max_count=10) == [a, c]  # b: 3D IoU 0.82 with a
    assert nms_3d([c, b, a], iou_threshold=0.9, max_count=10) == [a, b, c]
    assert nms_3d([c, b, a], iou_threshold=0.2, max_count=1) == [a]


def test_merge_detections_end_to_end():
    # 4 slices, 3 anchors, 2 classes; class 1 sees a nodule on slices 0-2, class 2 one box on slice 3
    nodule = [20, 20, 30, 30]
    boxes = np.array([nodule, [21, 21, 31, 31], [60, 0, 64, 4]], float)
    low = np.zeros((3, 2))
    s_nodule = np.array([[0.7, 0.0], [0.6, 0.0], [0.2, 0.0]])  # anchors 0 and 1 overlap: NMS keeps 0
    s_last = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.95]])
    detections = [(s_nodule, boxes), (s_nodule * 1.2, boxes), (s_nodule, boxes), (s_last, boxes)]
    found = merge_detections(detections, ProposalSettings(score_threshold=0.5), height=50, width=62)
    assert summary(found) == [
        (2, 0.95, [60.0, 0.0, 3.0, 62.0, 4.0, 4.0], [3]),  # clipped to the 62-pixel width
        (1, pytest.approx(0.84), [20.0, 20.0, 0.0, 30.0, 30.0, 3.0], [0, 1, 2]),
    ]
    assert merge_detections([(low, boxes)], ProposalSettings()) == []
    assert merge_detections([], ProposalSettings()) == []


@pytest.mark.parametrize(
    "kwargs, name", [({"score_threshold": 1.5}, "score_threshold"), ({"min_slices": 0}, "min_slices")]
)
def test_settings_are_checked(kwargs, name):
    with pytest.raises(ValueError, match=name):
        ProposalSettings(**kwargs)
