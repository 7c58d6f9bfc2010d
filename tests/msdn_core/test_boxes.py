"""The one box dialect (msdn_core.boxes): API items, 3D boxes, the manifest alias, limits."""

from __future__ import annotations

import pytest

from msdn_core.boxes import SliceBox, names_instances, parse_boxes
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


def test_a_box_in_mm_holds_the_voxels_whose_centres_it_holds():
    """Voxel centres at 10 + 0.5 i (x), 20 + 0.5 j (y), 30 + 2 k (z), worked by hand: x 10.9..12.1 holds
    i = 2, 3, 4; y 20.0..21.2 holds j = 0, 1, 2; z 33..37 holds k = 2, 3. Corners in any order."""
    from msdn_core.geometry import axis_affine

    affine = axis_affine((2.0, 0.5, 0.5), origin=(10.0, 20.0, 30.0))
    for corners in ([10.9, 20.0, 33.0, 12.1, 21.2, 37.0], [12.1, 21.2, 37.0, 10.9, 20.0, 33.0]):
        boxes = parse_boxes([{"box_mm": corners}], class_names=["n"], shape=(8, 10, 10), affine=affine)
        assert [(b.slice, b.xyxy) for b in boxes] == [(2, [2.0, 0.0, 5.0, 3.0]), (3, [2.0, 0.0, 5.0, 3.0])]
    with pytest.raises(InvalidBoxes, match="holds no voxel centre"):
        parse_boxes([{"box_mm": [10.1, 20.1, 30.1, 10.2, 20.2, 30.2]}], class_names=["n"], affine=affine)
    with pytest.raises(InvalidBoxes, match="needs an input with a geometry"):
        parse_boxes([{"box_mm": [10.9, 20.0, 33.0, 12.1, 21.2, 37.0]}], class_names=["n"])


def test_a_box_on_an_instance_goes_on_that_instances_slice():
    uids = ["1.2.3", "1.2.4", "1.2.5"]
    boxes = parse_boxes(
        [{"sop_instance_uid": "1.2.4", "box": [1, 2, 3, 4]}], class_names=["n"], shape=(3, 8, 8), sop_instance_uids=uids
    )
    assert [(b.slice, b.xyxy) for b in boxes] == [(1, [1.0, 2.0, 3.0, 4.0])]
    assert names_instances('[{"sop_instance_uid": "1.2.4", "box": [1, 2, 3, 4]}]')
    assert not names_instances('[{"slice": 1, "box": [1, 2, 3, 4]}]') and not names_instances("{bad")
    for item, message in (
        ({"sop_instance_uid": "9.9", "box": [1, 2, 3, 4]}, "not an instance of the input series"),
        ({"sop_instance_uid": "1.2.4", "slice": 1, "box": [1, 2, 3, 4]}, "a box on an instance is"),
        ({"sop_instance_uid": "1.2.4", "box": [1, 2, 0, 3, 4, 1]}, "a box on an instance is"),
    ):
        with pytest.raises(InvalidBoxes, match=message):
            parse_boxes([item], class_names=["n"], sop_instance_uids=uids)
    with pytest.raises(InvalidBoxes, match="needs DICOM input"):
        parse_boxes([{"sop_instance_uid": "1.2.4", "box": [1, 2, 3, 4]}], class_names=["n"])
