"""msdn_core.postprocess: components, minimum volume, candidate filter and scores (by hand)."""

from __future__ import annotations

import numpy as np
import pytest

from msdn_core.postprocess import CandidateBox, postprocess

SPACING = (2.0, 1.0, 1.0)  # one voxel = 2 mm^3


def scene() -> np.ndarray:
    labels = np.zeros((3, 10, 10), np.uint8)
    labels[0:2, 1:3, 1:4] = 1  # A: 12 voxels = 24 mm^3
    labels[2, 8, 8] = 1  # B: 1 voxel = 2 mm^3
    labels[1, 5:7, 5:7] = 2  # C: 4 voxels = 8 mm^3
    return labels


def test_components_are_listed_largest_first_with_boxes_and_centres():
    labels = scene()
    cleaned, found = postprocess(labels, spacing=SPACING, class_names=["a", "b"])
    np.testing.assert_array_equal(cleaned, labels)
    assert [(c["class_value"], c["voxels"], c["box"], c["score"]) for c in found] == [
        (1, 12, [1, 1, 0, 4, 3, 2], None),
        (2, 4, [5, 5, 1, 7, 7, 2], None),
        (1, 1, [8, 8, 2, 9, 9, 3], None),
    ]
    assert found[0]["centre"] == pytest.approx([2.0, 1.5, 0.5])  # x 1..3, y 1..2, z 0..1
    assert found[0]["volume_ml"] == pytest.approx(0.024)


def test_minimum_volume_removes_small_components():
    labels = scene()
    cleaned, found = postprocess(labels, spacing=SPACING, class_names=["a", "b"], min_volume_mm3=8.0)
    assert [c["voxels"] for c in found] == [12, 4]  # C (8 mm^3) stays: the limit is inclusive
    expected = labels.copy()
    expected[2, 8, 8] = 0
    np.testing.assert_array_equal(cleaned, expected)
    _, found = postprocess(labels, spacing=SPACING, class_names=["a", "b"], min_volume_mm3=8.1)
    assert [c["voxels"] for c in found] == [12]
    assert not labels[2, 8, 8] == 0  # the input is not changed


def test_candidate_scores_and_the_overlap_filter():
    labels = scene()
    boxes = [
        CandidateBox(1, (0, 0, 0, 2, 2, 1), 0.7),  # holds A's voxel (z0, y1, x1)
        CandidateBox(1, (3, 1, 1, 4, 3, 2), 0.9),  # holds A's voxels x=3 on z1
        CandidateBox(1, (4, 4, 0, 10, 10, 2), 0.99),  # class 1, but B is on z2: no overlap
        CandidateBox(2, (0, 0, 0, 5, 5, 3), 0.5),  # class 2 box next to C (x, y < 5): no overlap
    ]
    cleaned, found = postprocess(
        labels, spacing=SPACING, class_names=["a", "b"], candidate_boxes=boxes, keep_overlapping=True
    )
    assert [(c["class_value"], c["voxels"], c["score"]) for c in found] == [(1, 12, 0.9)]
    expected = np.zeros_like(labels)
    expected[0:2, 1:3, 1:4] = 1
    np.testing.assert_array_equal(cleaned, expected)
    _, kept = postprocess(labels, spacing=SPACING, class_names=["a", "b"], candidate_boxes=boxes)
    assert [c["score"] for c in kept] == [0.9, None, None]


def test_score_volume_gives_the_component_maximum():
    labels = scene()
    scores = np.zeros(labels.shape, np.uint8)
    scores[0, 1, 1], scores[1, 2, 3] = 100, 200  # in A
    scores[1, 5, 5] = 50  # in C
    scores[0, 9, 9] = 255  # background: never counted
    _, found = postprocess(labels, spacing=SPACING, class_names=["a", "b"], score_volume=scores, score_scale=0.5)
    assert [c["score"] for c in found] == [100.0, 25.0, 0.0]


def test_confirmation_scores_detection_times_mean_segmentation_and_thresholds():
    labels = scene()
    scores = np.zeros(labels.shape, np.uint8)
    scores[0:2, 1:3, 1:4] = 102  # A: 12 voxels at 102 ...
    scores[1, 1:3, 1:4] = 204  # ... 6 of them at 204: mean 153 -> 0.6 with scale 1/255
    scores[1, 5:7, 5:7] = 51  # C: mean 0.2
    boxes = [CandidateBox(1, (0, 0, 0, 4, 4, 2), 0.5), CandidateBox(2, (4, 4, 0, 8, 8, 3), 0.9)]
    common = dict(spacing=SPACING, class_names=["a", "b"], candidate_boxes=boxes, score_volume=scores)
    _, found = postprocess(labels, score_scale=1 / 255, confirm=True, keep_overlapping=True, **common)
    assert [(c["voxels"], c["detection_score"]) for c in found] == [(12, 0.5), (4, 0.9)]
    assert [c["segmentation_score"] for c in found] == pytest.approx([0.6, 0.2])
    assert [c["score"] for c in found] == pytest.approx([0.3, 0.18])  # 0.5 x 0.6, 0.9 x 0.2
    # at an operating threshold of 0.2 only A is kept: C's detection (0.9) is not confirmed (0.18)
    cleaned, kept = postprocess(labels, score_scale=1 / 255, confirm=True, min_score=0.2, **common)
    assert [c["voxels"] for c in kept] == [12, 1]  # B: no candidate, no score: kept (no overlap filter)
    assert kept[1]["score"] == 0.0 and "detection_score" not in kept[1]
    assert not (cleaned == 2).any() and (cleaned == 1).sum() == 13
    # without confirmation: the detection score, and no extra keys
    _, plain = postprocess(labels, keep_overlapping=True, **common)
    assert [(c["score"], "segmentation_score" in c) for c in plain] == [(0.5, False), (0.9, False)]
    with pytest.raises(ValueError, match="score_volume"):
        postprocess(labels, spacing=SPACING, class_names=["a", "b"], confirm=True)


def test_diagonal_neighbours_are_one_component():
    labels = np.zeros((2, 4, 4), np.uint8)
    labels[0, 0, 0] = labels[1, 1, 1] = 1
    _, found = postprocess(labels, spacing=(1.0, 1.0, 1.0), class_names=["a"])
    assert len(found) == 1 and found[0]["voxels"] == 2


def test_more_components_than_uint16_labels_hold():
    labels = np.zeros((1, 520, 520), np.uint8)
    labels[0, ::2, ::2] = 1  # 260 x 260 = 67600 isolated voxels
    labels[0, 1, 1] = 0
    labels[0, 100:103, 100:103] = 1  # one 9-voxel component among them
    cleaned, found = postprocess(labels, spacing=(1.0, 1.0, 1.0), class_names=["a"], min_volume_mm3=2)
    assert [c["voxels"] for c in found] == [9]
    assert int(cleaned.sum()) == 9


def test_empty_and_bad_arguments():
    cleaned, found = postprocess(np.zeros((2, 3, 3), np.uint8), spacing=SPACING, class_names=["a"])
    assert found == [] and not cleaned.any()
    with pytest.raises(ValueError, match="min_volume_mm3"):
        postprocess(scene(), spacing=SPACING, class_names=["a", "b"], min_volume_mm3=-1)
    with pytest.raises(ValueError, match="score_volume"):
        postprocess(scene(), spacing=SPACING, class_names=["a", "b"], score_volume=np.zeros((1, 1, 1)))


def test_slices_apart_are_labelled_apart_as_one_labelling_of_the_volume_would():
    """Runs of non-empty slices are labelled separately: the same components, order and cleaning as
    scipy's labelling of the whole volume (the independent path), components touching diagonally
    across adjacent slices included; and in place with ``copy=False``."""
    from scipy import ndimage

    rng = np.random.default_rng(4)
    labels = np.zeros((12, 40, 50), np.uint8)
    for z in (0, 1, 2, 5, 8, 9, 11):  # runs 0-2, 5, 8-9, 11
        labels[z] = (rng.random((40, 50)) > 0.93) * rng.integers(1, 3, size=(40, 50))
    labels[3:5] = 0
    expected, removed = [], np.zeros(labels.shape, bool)
    for value in (1, 2):
        lab, _ = ndimage.label(labels == value, structure=np.ones((3, 3, 3)))
        for k, bbox in enumerate(ndimage.find_objects(lab), start=1):
            size = int(np.count_nonzero(lab[bbox] == k))
            if size * 2.0 < 6.0:
                removed |= lab == k
                continue
            zs, ys, xs = bbox
            expected.append((value, size, [xs.start, ys.start, zs.start, xs.stop, ys.stop, zs.stop]))
    expected.sort(key=lambda c: -c[1])
    original = labels.copy()
    cleaned, found = postprocess(labels, spacing=SPACING, class_names=["a", "b"], min_volume_mm3=6.0, copy=False)
    assert [(c["class_value"], c["voxels"], c["box"]) for c in found] == expected
    assert len(expected) > 10 and removed.any()
    np.testing.assert_array_equal(cleaned, np.where(removed, 0, original))
    assert cleaned is labels  # cleaned in place
    again, _ = postprocess(original, spacing=SPACING, class_names=["a", "b"], min_volume_mm3=6.0)
    assert again is not original and (original != again).any()  # the default keeps its input
