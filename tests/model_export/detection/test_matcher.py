import pytest
import torch

from model_export.detection.matcher import BACKGROUND, IGNORE, Matcher


def test_thresholds_and_low_quality_matches():
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # IoU 1 with box 0 -> 0
            [0.0, 0.0, 10.0, 8.0],  # IoU 0.8 with box 0 -> 0
            [0.0, 0.0, 10.0, 4.5],  # IoU 0.45 with box 0 -> ignore
            [0.0, 0.0, 10.0, 2.0],  # IoU 0.2 -> background
            [50.0, 50.0, 60.0, 60.0],  # nothing -> background
            [100.0, 100.0, 120.0, 120.0],  # IoU 0.25 with box 1, its best -> low-quality match 1
        ]
    )
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [100.0, 100.0, 110.0, 110.0]])
    m = Matcher(0.5, 0.4)(boxes, anchors)
    assert m.tolist() == [0, 0, IGNORE, BACKGROUND, BACKGROUND, 1]
    strict = Matcher(0.5, 0.4, allow_low_quality=False)(boxes, anchors)
    assert strict.tolist() == [0, 0, IGNORE, BACKGROUND, BACKGROUND, BACKGROUND]


def test_no_boxes_means_all_background():
    m = Matcher()(torch.zeros(0, 4), torch.tensor([[0.0, 0.0, 1.0, 1.0]] * 3))
    assert m.tolist() == [BACKGROUND] * 3


@pytest.mark.parametrize("pos, neg, name", [(0.0, 0.0, "positive_threshold"), (0.5, 0.7, "negative_threshold")])
def test_bad_thresholds(pos, neg, name):
    with pytest.raises(ValueError, match=name):
        Matcher(pos, neg)
