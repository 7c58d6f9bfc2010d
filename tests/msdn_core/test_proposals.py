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


# --- the vectorised selection and linking give what the plain per-box loops give ---------------------


def _select_reference(scores, boxes, *, score_threshold, nms_iou, max_per_slice, height, width, pre_nms_top=1000):
    """Step 1 written plainly: a float64 copy of every row, clipped, filtered, the best pre_nms_top."""
    scores = np.asarray(scores, np.float64)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    out = []
    for c in range(scores.shape[1]):
        sel = np.flatnonzero(scores[:, c] >= score_threshold)
        b, s = boxes[sel].copy(), scores[sel, c]
        b[:, [0, 2]] = np.clip(b[:, [0, 2]], 0, width)
        b[:, [1, 3]] = np.clip(b[:, [1, 3]], 0, height)
        valid = (b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])
        b, s = b[valid], s[valid]
        if s.size > pre_nms_top:
            top = np.argpartition(-s, pre_nms_top - 1)[:pre_nms_top]
            b, s = b[top], s[top]
        keep = nms(b, s, nms_iou, max_keep=max_per_slice)
        out.append(np.concatenate([b[keep], s[keep, None]], axis=1) if keep else np.zeros((0, 5)))
    return out


def _link_reference(per_slice, *, link_iou, max_gap):
    """Steps 2-3 written plainly: every box against every open track, one IoU at a time."""
    from msdn_core.proposals import box_iou

    open_tracks, closed = [], []
    for z, rows_ in sorted(per_slice, key=lambda item: item[0]):
        rows_ = np.asarray(rows_, np.float64).reshape(-1, 5)
        still = []
        for t in open_tracks:
            (closed if t.boxes[-1].slice < z - 1 - max_gap else still).append(t)
        open_tracks, taken = still, set()
        for r in rows_[np.argsort(-rows_[:, 4], kind="stable")]:
            box = tuple(float(v) for v in r[:4])
            best, best_iou = None, -1.0
            for k, t in enumerate(open_tracks):
                if k in taken or t.boxes[-1].slice >= z:
                    continue
                iou = float(box_iou(t.boxes[-1].box, np.array([box]))[0])
                if iou >= link_iou and iou > best_iou and iou > 0:
                    best, best_iou = k, iou
            scored = ScoredBox(int(z), box, float(r[4]))
            if best is None:
                open_tracks.append(Candidate(1, scored.score, [scored]))
                taken.add(len(open_tracks) - 1)
            else:
                open_tracks[best].boxes.append(scored)
                open_tracks[best].score = max(open_tracks[best].score, scored.score)
                taken.add(best)
    tracks = closed + open_tracks
    tracks.sort(key=lambda t: -t.score)
    return tracks


@pytest.mark.parametrize("seed", [0, 1])
def test_vectorised_selection_and_linking_match_the_plain_loops(seed):
    rng = np.random.default_rng(seed)
    selected = []
    for _ in range(25):
        n = 2000
        xy = rng.integers(-8, 70, size=(n, 2)).astype(np.float32)  # some outside the 64 x 64 image
        wh = rng.integers(0, 14, size=(n, 2)).astype(np.float32)  # some empty
        boxes = np.concatenate([xy, xy + wh], axis=1)
        scores = (rng.integers(0, 40, size=(n, 2)) / 40.0).astype(np.float32)  # many ties, 2 classes
        kw = dict(score_threshold=0.3, nms_iou=0.3, max_per_slice=12, height=64, width=64)
        got = select_slice_boxes(scores, boxes, pre_nms_top=500, **kw)
        want = _select_reference(scores, boxes, pre_nms_top=500, **kw)
        assert len(got) == len(want) == 2
        for g, w in zip(got, want, strict=True):
            np.testing.assert_array_equal(g, w)
        selected.append(got[0])
    per_slice = [(z, r) for z, r in enumerate(selected)] + [(3, selected[7])]  # a slice given twice too
    for link_iou, max_gap in ((0.2, 1), (0.0, 0), (0.5, 2)):
        got = link_slices(per_slice, link_iou=link_iou, max_gap=max_gap)
        want = _link_reference(per_slice, link_iou=link_iou, max_gap=max_gap)
        assert summary(got) == summary(want)
        assert [[(b.slice, b.box, b.score) for b in c.boxes] for c in got] == [
            [(b.slice, b.box, b.score) for b in c.boxes] for c in want
        ]
