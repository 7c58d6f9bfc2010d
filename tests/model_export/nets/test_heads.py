import pytest
import torch

from model_export.losses import sigmoid_focal_loss
from model_export.nets.heads import DetectionUnit, SegmentationUnit


def test_segmentation_unit_softmax():
    su = SegmentationUnit(4, 2)
    p = su(torch.randn(2, 4, 8, 8))
    assert p.shape == (2, 3, 8, 8)
    assert torch.allclose(p.sum(1), torch.ones(2, 8, 8), atol=1e-6)


def _du(**kw):
    return DetectionUnit([8], [8], 2, head_channels=8, head_convs=2, **kw)


def test_detection_unit_shapes_and_prior():
    du = _du()
    cls, box = du([torch.randn(1, 8, 4, 6)])
    assert cls[0].shape == (1, 4 * 6 * 9, 2) and box[0].shape == (1, 4 * 6 * 9, 4)
    # classifier bias starts at the RetinaNet prior pi = 0.01
    assert torch.allclose(torch.sigmoid(du.cls_out.bias), torch.full((18,), 0.01))
    assert du.anchors([(4, 6)]).shape == (4 * 6 * 9, 4)


def test_detection_loss_without_boxes_is_focal_over_all_anchors():
    du = _du()
    cls, box = du([torch.randn(1, 8, 4, 4)])
    losses = du.loss(cls, box, [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}], [(4, 4)])
    expected = sigmoid_focal_loss(cls[0][0], torch.zeros_like(cls[0][0]))
    assert losses["det_box"].item() == 0.0
    assert losses["det_cls"].item() == pytest.approx(expected.item(), rel=1e-6)


def test_detection_loss_box_term_vanishes_for_exact_deltas():
    du = _du()
    sizes = [(4, 4)]
    anchors = du.anchors(sizes)
    gt = anchors[5 * 9 + 4].clone()  # the ratio-1, scale-1 anchor at row 1, col 1: a perfect match
    target = {"boxes": gt[None], "labels": torch.tensor([2])}
    matches = du.matcher(gt[None], anchors)
    pos = matches >= 0
    deltas = torch.zeros(1, anchors.shape[0], 4)
    deltas[0, pos] = du.box_coder.encode(gt[None].expand(int(pos.sum()), 4), anchors[pos])
    logits = torch.zeros(1, anchors.shape[0], 2)
    losses = du.loss([logits], [deltas], [target], sizes)
    assert losses["det_box"].item() == pytest.approx(0.0, abs=1e-6)
    # classification: positives get target 1 on class index 1 (label 2); normalised by #positives
    cls_t = torch.zeros_like(logits[0])
    cls_t[pos, 1] = 1
    valid = matches != -2
    expected = sigmoid_focal_loss(logits[0][valid], cls_t[valid]) / pos.sum()
    assert losses["det_cls"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_detect_decodes_to_anchor_boxes_for_zero_deltas():
    du = _du()
    sizes = [(2, 2)]
    n = 2 * 2 * 9
    scores, boxes = du.detect([torch.zeros(1, n, 2)], [torch.zeros(1, n, 4)], sizes)
    assert torch.allclose(scores, torch.full((1, n, 2), 0.5))
    assert torch.allclose(boxes[0], du.anchors(sizes), atol=1e-4)


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(in_channels=[8, 8], strides=[8]), "strides"),
        (dict(in_channels=[8], strides=[8], num_classes=0), "num_classes"),
        (dict(in_channels=[8], strides=[8], head_channels=0), "head_channels"),
        (dict(in_channels=[8], strides=[8], prior=1.0), "prior"),
    ],
)
def test_detection_unit_bad_arguments(kwargs, name):
    kwargs.setdefault("num_classes", 1)
    with pytest.raises(ValueError, match=name):
        DetectionUnit(**kwargs)
