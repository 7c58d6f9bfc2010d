"""The one box dialect (msdn_core.boxes): API items, 3D boxes, the manifest alias, limits."""

from __future__ import annotations

import pytest

from msdn_core.boxes import SliceBox, parse_boxes
from msdn_core.errors import ErrorCode, InvalidBoxes, LimitExceeded

NAMES = ["nodule", "vessel"]


def test_api_dialect_2d_and_3d():
    text = '[{"slice": 2, "box": [10, 5, 21, 8], "label": "vessel"}, {"box": [1, 2, 3.5, 4, 6, 6]}]'
    boxes = parse_boxes(text, class_names=NAMES, shape=(8, 16, 32))
    assert boxes == [SliceBox(2, 10, 5, 21, 8, 2)] + [SliceBox(z, 1, 2, 4, 6, None) for z in (3, 4, 5)]
    assert boxes[0].pixel_region() == (slice(5, 8), slice(10, 21)) and boxes[0].z == 2
    assert boxes[0].box == (10.0, 5.0, 21.0, 8.0) and boxes[0].xyxy == [10.0, 5.0, 21.0, 8.0]


def test_decoded_lists_box3d_alias_and_default_label():
    boxes = parse_boxes(
        {"boxes": [{"box3d": [0, 0, 0, 2, 2, 2]}]}, class_names=NAMES, default_label=1, source="manifest"
    )
    assert [(b.slice, b.label, b.source) for b in boxes] == [(0, 1, "manifest"), (1, 1, "manifest")]
    assert parse_boxes(None, class_names=NAMES) == [] and parse_boxes("  ", class_names=NAMES) == []


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[", "not valid JSON"),
        ('{"a": 1}', "must be a JSON list"),
        ('[{"slice": 0, "box": [0, 0, 1, 1], "box3d": [0, 0, 0, 1, 1, 1]}]', "must be an object with a 'box'"),
        ('[{"slice": 9, "box": [0, 0, 1, 1]}]', "outside the volume's 8 slices"),
        ('[{"slice": 0, "box": [0, 0, 40, 1]}]', "outside the 32 x 16"),
        ('[{"slice": 0, "box": [0, 0, 1, 1], "label": "liver"}]', "not a class of this model"),
        ('[{"box": [0, 0, 0, 1, 1, 9]}]', "0 <= z1 < z2 <= 8"),
    ],
)
def test_errors_are_invalid_boxes(text, message):
    with pytest.raises(InvalidBoxes, match=message) as err:
        parse_boxes(text, class_names=NAMES, shape=(8, 16, 32))
    assert err.value.code is ErrorCode.INVALID_BOXES and err.value.status == 422


def test_too_many_boxes_counts_expanded_slices():
    with pytest.raises(LimitExceeded) as err:
        parse_boxes('[{"box": [0, 0, 0, 1, 1, 5]}]', class_names=NAMES, max_boxes=4)
    assert err.value.code is ErrorCode.TOO_MANY_BOXES and err.value.status == 413
