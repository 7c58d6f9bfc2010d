"""service.boxes: the boxes field (re-exported from msdn_core.boxes)."""

from __future__ import annotations

import json

import pytest

from service.boxes import SliceBox, parse_boxes
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
