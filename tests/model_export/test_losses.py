import math

import pytest
import torch

from model_export.losses import box_regression_loss, cross_entropy_from_probs, sigmoid_focal_loss, soft_dice_loss


def test_focal_loss_hand_values():
    logits = torch.zeros(2)
    targets = torch.tensor([1.0, 0.0])
    per = sigmoid_focal_loss(logits, targets, reduction="none")
    # p = 0.5: CE = ln 2, (1 - p_t)^2 = 0.25; alpha_t = 0.25 for the positive, 0.75 for the negative.
    assert per[0].item() == pytest.approx(0.25 * 0.25 * math.log(2), rel=1e-6)
    assert per[1].item() == pytest.approx(0.75 * 0.25 * math.log(2), rel=1e-6)
    assert sigmoid_focal_loss(logits, targets).item() == pytest.approx(per.sum().item())
    # a confident correct prediction is down-weighted by (1 - p_t)^gamma
    p = 1 / (1 + math.exp(-3.0))
    expected = -0.25 * (1 - p) ** 2 * math.log(p)
    assert sigmoid_focal_loss(torch.tensor([3.0]), torch.tensor([1.0])).item() == pytest.approx(expected, rel=1e-5)
    # gamma 0 and alpha disabled is plain BCE
    bce = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor([0.3]), torch.tensor([1.0]))
    assert sigmoid_focal_loss(torch.tensor([0.3]), torch.tensor([1.0]), alpha=-1, gamma=0).item() == pytest.approx(
        bce.item()
    )
    with pytest.raises(ValueError, match="reduction"):
        sigmoid_focal_loss(logits, targets, reduction="avg")


def test_soft_dice_hand_values():
    fg = torch.tensor([[0.0, 1.0], [0.5, 1.0]])
    probs = torch.stack([1 - fg, fg]).unsqueeze(0)  # (1, 2, 2, 2)
    labels = torch.tensor([[[0, 1], [1, 1]]])
    # background: |P.G| = 1, |P| = 1.5, |G| = 1 -> 0.8 ; foreground: 2.5, 2.5, 3 -> 5 / 5.5
    expected = 1 - (0.8 + 5 / 5.5) / 2
    assert soft_dice_loss(probs, labels).item() == pytest.approx(expected, abs=1e-5)
    perfect = torch.stack([labels[0] == 0, labels[0] == 1]).float().unsqueeze(0)
    assert soft_dice_loss(perfect, labels).item() == pytest.approx(0.0, abs=1e-6)


def test_box_regression_loss_hand_values():
    d = torch.tensor([[0.05, 1.0, 0.0, -2.0]])
    t = torch.zeros(1, 4)
    beta = 1 / 9
    expected = 0.5 * 0.05**2 / beta + (1 - 0.5 * beta) + 0 + (2 - 0.5 * beta)
    assert box_regression_loss(d, t).item() == pytest.approx(expected, rel=1e-6)


def test_cross_entropy_from_probabilities_matches_torch_on_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 4)
    labels = torch.randint(0, 3, (2, 5, 4))
    expected = torch.nn.functional.cross_entropy(logits, labels)
    probs = torch.softmax(logits, dim=1)
    assert cross_entropy_from_probs(probs, labels).item() == pytest.approx(expected.item(), rel=1e-5)
    assert cross_entropy_from_probs(probs, labels.unsqueeze(1)).item() == pytest.approx(expected.item(), rel=1e-5)
    # by hand: one pixel, p(label) = 0.25 -> ln 4; p = 0 is clamped at eps
    one = torch.tensor([0.75, 0.25]).view(1, 2, 1, 1)
    assert cross_entropy_from_probs(one, torch.ones(1, 1, 1, dtype=torch.int64)).item() == pytest.approx(math.log(4))
    zero = torch.tensor([1.0, 0.0]).view(1, 2, 1, 1)
    assert cross_entropy_from_probs(zero, torch.ones(1, 1, 1, dtype=torch.int64), eps=1e-4).item() == pytest.approx(
        -math.log(1e-4), rel=1e-5
    )
    with pytest.raises(ValueError, match="eps"):
        cross_entropy_from_probs(one, torch.ones(1, 1, 1, dtype=torch.int64), eps=0)
