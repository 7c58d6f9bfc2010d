"""service.boxes: the boxes field, NMS and detector proposals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.boxes import SliceBox, nms, parse_boxes, proposals
from service.errors import InvalidBoxes, LimitExceeded

SHAPE = (4, 20, 30)  # Z, Y (height), X (width)
NAMES = ["nodule", "vessel"]


def parse(items, max_boxes=100):
    return parse_boxes(json.dumps(items), shape=SHAPE, class_names=NAMES, max_boxes=max_boxes)


def test_slice_box_and_label_by_value_or_name():
    boxes = parse(
        [
            {"slice": 1, "box": [10, 5, 21, 8]},
            {"slice": 3, "box": [0, 0, 30, 20], "label": "vessel"},
            {"slice": 0, "box": [1, 1, 2, 2], "label": 1},
        ]
    )
    assert boxes[0] == SliceBox(1, 10, 5, 21, 8, None)
    assert boxes[1].label == 2 and boxes[2].label == 1
    rows, cols = boxes[0].pixel_region()
    assert (rows.start, rows.stop, cols.start, cols.stop) == (5, 8, 10, 21)  # rows 5..7, columns 10..20


def test_3d_box_expands_to_the_slices_it_covers():
    boxes = parse([{"box": [2, 3, 1.5, 12, 13, 3.2], "label": "nodule"}])
    assert [b.slice for b in boxes] == [1, 2, 3]
    assert all(b.xyxy == [2, 3, 12, 13] and b.label == 1 for b in boxes)


def test_empty_and_wrapped_forms():
    assert parse_boxes(None, shape=SHAPE, class_names=NAMES, max_boxes=1) == []
    assert parse_boxes("  ", shape=SHAPE, class_names=NAMES, max_boxes=1) == []
    assert (
        len(parse_boxes('{"boxes": [{"slice": 0, "box": [0, 0, 1, 1]}]}', shape=SHAPE, class_names=NAMES, max_boxes=1))
        == 1
    )


@pytest.mark.parametrize(
    "text, message",
    [
        ("[{", "not valid JSON"),
        ('"abc"', "must be a JSON list"),
        ("[[1, 2, 3, 4]]", r"boxes\[0\] must be an object"),
        ('[{"slice": 0, "box": [0, 0, 1]}]', r"boxes\[0\]\.box must be"),
        ('[{"slice": 0, "box": [0, 0, "a", 1]}]', r"boxes\[0\]\.box\[2\] must be a finite number"),
        ('[{"box": [0, 0, 1, 1]}]', "needs 'slice'"),
        ('[{"slice": 4, "box": [0, 0, 1, 1]}]', "outside the volume's 4 slices"),
        ('[{"slice": 1.5, "box": [0, 0, 1, 1]}]', "slice must be a non-negative integer"),
        ('[{"slice": 0, "box": [5, 0, 5, 1]}]', "x1 < x2"),
        ('[{"slice": 0, "box": [0, 0, 31, 1]}]', "outside the 30 x 20"),
        ('[{"slice": 0, "box": [-1, 0, 3, 1]}]', "outside the 30 x 20"),
        ('[{"slice": 0, "box": [0, 0, 1, 1], "label": 3}]', "label must be a class value 1..2"),
        ('[{"slice": 0, "box": [0, 0, 1, 1], "label": "liver"}]', "not a class of this model"),
        ('[{"slice": 0, "box": [0, 0, 1, 1], "score": 1}]', "unknown keys"),
        ('[{"box": [0, 0, 3, 1, 1, 2]}]', r"z range \[3, 2\]"),
        ('[{"box": [0, 0, 0, 1, 1, 5]}]', "0 <= z1 < z2 <= 4"),
    ],
)
def test_malformed_boxes_say_what_is_wrong(text, message):
    with pytest.raises(InvalidBoxes, match=message):
        parse_boxes(text, shape=SHAPE, class_names=NAMES, max_boxes=100)


def test_box_count_limit():
    with pytest.raises(LimitExceeded):
        parse([{"box": [0, 0, 0, 1, 1, 4]}], max_boxes=3)


def test_nms_by_hand():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 5]], float)
    scores = np.array([0.9, 0.8, 0.7, 0.95])
    # box 3 (best) vs 0: IoU 50/100 = 0.5 > 0.3 -> 0 dropped; 1 vs 3: inter 9*4=36, union 50+100-36 -> 0.32 dropped
    assert nms(boxes, scores, 0.3) == [3, 2]
    assert nms(boxes, scores, 0.9) == [3, 0, 1, 2]


def test_proposals_threshold_clip_and_order():
    scores = np.array([[0.9, 0.1], [0.4, 0.8], [0.6, 0.0]])
    boxes = np.array([[-5, 2, 10, 12], [0, 0, 50, 50], [3, 3, 6, 6]], float)
    found = proposals(
        scores, boxes, slice_index=2, height=20, width=30, score_threshold=0.5, iou_threshold=0.3, max_count=2
    )
    assert [(b.label, b.score) for b in found] == [(1, 0.9), (2, 0.8)]
    assert found[0].xyxy == [0, 2, 10, 12] and found[1].xyxy == [0, 0, 30, 20]
    assert all(b.slice == 2 and b.source == "detector" for b in found)
