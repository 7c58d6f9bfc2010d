"""Box constraint loss (Kervadec et al. 2020): every constraint and the log-barrier extension by hand."""

from __future__ import annotations

import math

import pytest
import torch

from model_export.box_constraints import BoxConstraintLoss, constraint_values, log_barrier_extension

T = 5.0
C0 = (2 * math.log(T) + 1) / T  # psi_t(0) = -(1/t) log(1/t^2) + 1/t


def _probs(fg: torch.Tensor) -> torch.Tensor:
    """(1, 2, H, W) two-class probabilities from an (H, W) foreground map."""
    return torch.stack([1 - fg, fg])[None]


def _target(*boxes, labels=None):
    labels = labels or [1] * len(boxes)
    return [{"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4), "labels": torch.tensor(labels)}]


BOX = [1.0, 2.0, 4.0, 6.0]  # columns 1..3 (3 wide), rows 2..5 (4 tall)


def _filled(h=8, w=8):
    fg = torch.zeros(h, w)
    fg[2:6, 1:4] = 1.0
    return fg


# -- the log-barrier extension ------------------------------------------------------------------------
def test_log_barrier_extension_matches_its_formula_on_both_sides():
    z = torch.tensor([-2.0, -0.5, -0.05, -0.03, 0.0, 1.5], dtype=torch.float64)
    got = log_barrier_extension(z, T)
    joint = -1 / T**2  # -0.04
    want = [-math.log(-v) / T if v <= joint else T * v - math.log(1 / T**2) / T + 1 / T for v in z.tolist()]
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64))
    assert got[0].item() == pytest.approx(-math.log(2) / 5) and got[4].item() == pytest.approx(C0)
    assert got[5].item() == pytest.approx(7.5 + C0)


def test_log_barrier_extension_is_continuous_with_its_slope_at_the_joint():
    joint = -1 / T**2
    eps = 1e-7
    z = torch.tensor([joint - eps, joint, joint + eps], dtype=torch.float64, requires_grad=True)
    y = log_barrier_extension(z, T)
    assert y[0].item() == pytest.approx(y[2].item(), abs=1e-5)
    assert y[1].item() == pytest.approx(-math.log(1 / T**2) / T)  # the log piece at the joint
    (grad,) = torch.autograd.grad(y.sum(), z)
    torch.testing.assert_close(grad, torch.full((3,), T, dtype=torch.float64), rtol=1e-5, atol=1e-5)
    # far inside the feasible side the slope is -1/(t z); no NaN from the unused branch
    z2 = torch.tensor([-10.0, 3.0], requires_grad=True)
    (g2,) = torch.autograd.grad(log_barrier_extension(z2, T).sum(), z2)
    torch.testing.assert_close(g2, torch.tensor([1 / 50, T]))
    with pytest.raises(ValueError, match="t must be"):
        log_barrier_extension(z2, 0.0)


# -- the constraints ----------------------------------------------------------------------------------
def test_a_mask_filling_the_box_satisfies_emptiness_and_tightness():
    (row,) = constraint_values(_probs(_filled()), _target(BOX), band_width=2)
    assert row["empty"].tolist() == [0.0]
    # horizontal bands: rows 2-3, 4-5 (2 lines, 3 pixels each filled: 6); vertical: columns 1-2 (8), 3 (4)
    assert row["tight"].tolist() == [2 - 6, 2 - 6, 2 - 8, 1 - 4]
    assert row["size"].numel() == 0
    violation = sum(torch.clamp(v, min=0).sum() for v in row.values())
    assert violation == 0
    # the loss: emptiness on its boundary (psi(0)), tightness strictly feasible (log piece), / (H W)
    loss = BoxConstraintLoss(band_width=2)(_probs(_filled()), _target(BOX))
    assert loss["box_empty"].item() == pytest.approx(C0 / 64)
    want_tight = sum(-math.log(v) / T for v in (4, 4, 6, 3)) / 64
    assert loss["box_tight"].item() == pytest.approx(want_tight)
    assert loss["box"].item() == pytest.approx(C0 / 64 + want_tight)
    assert abs(loss["box"].item()) < 0.02  # about nothing next to a Dice loss in [0, 1]


def test_an_empty_prediction_violates_tightness_by_the_band_widths():
    (row,) = constraint_values(_probs(torch.zeros(8, 8)), _target(BOX), band_width=2)
    assert row["tight"].tolist() == [2.0, 2.0, 2.0, 1.0]  # each band misses all its lines
    assert row["empty"].tolist() == [0.0]
    loss = BoxConstraintLoss(band_width=2)(_probs(torch.zeros(8, 8)), _target(BOX))
    assert loss["box_tight"].item() == pytest.approx(sum(T * v + C0 for v in (2, 2, 2, 1)) / 64)
    # the default band width 5 is wider than the box: one band per direction with all its lines
    (row5,) = constraint_values(_probs(torch.zeros(8, 8)), _target(BOX))
    assert row5["tight"].tolist() == [4.0, 3.0]


def test_foreground_outside_the_box_is_penalised_by_its_mass():
    fg = _filled()
    fg[0, 0] = fg[7, 7] = fg[0, 5] = 0.5  # 1.5 pixels of foreground outside the box
    (row,) = constraint_values(_probs(fg), _target(BOX), band_width=2)
    assert row["empty"].item() == pytest.approx(1.5)
    loss = BoxConstraintLoss(band_width=2)(_probs(fg), _target(BOX))
    assert loss["box_empty"].item() == pytest.approx((T * 1.5 + C0) / 64)
    # a second box of the same class covering two of them leaves 0.5 outside
    (two,) = constraint_values(_probs(fg), _target(BOX, [5.0, 0.0, 6.0, 1.0], [0.0, 0.0, 1.0, 1.0]), band_width=2)
    assert two["empty"].item() == pytest.approx(0.5)


def test_size_bounds_by_hand():
    fg = _filled()
    (row,) = constraint_values(_probs(fg), _target(BOX), band_width=2, size_bounds=(0.5, 0.9))
    assert row["size"].tolist() == pytest.approx([0.5 * 12 - 12, 12 - 0.9 * 12])  # [-6, +1.2]: too full
    fg[2:6, 3] = 0.0  # 8 of 12 pixels
    (row,) = constraint_values(_probs(fg), _target(BOX), band_width=2, size_bounds=(0.5, 0.9))
    assert row["size"].tolist() == pytest.approx([6 - 8, 8 - 10.8])
    loss = BoxConstraintLoss(band_width=2, size_bounds=(0.5, 0.9), size_weight=2.0, weight=0.5)(
        _probs(fg), _target(BOX)
    )
    want_size = (-math.log(2) / T - math.log(2.8) / T) / 64
    assert loss["box_size"].item() == pytest.approx(want_size)
    want = 0.5 * (loss["box_empty"] + loss["box_tight"] + 2 * loss["box_size"])
    assert loss["box"].item() == pytest.approx(want.item())


def test_classes_rows_and_clipping():
    # class 2 has the box, class 1 has none: all of class 1 must vanish; background is not constrained
    probs = torch.zeros(2, 3, 6, 6)
    probs[:, 0] = 0.5
    probs[:, 1] = 0.25
    probs[:, 2] = 0.25
    targets = [
        {"boxes": torch.tensor([[0.0, 0.0, 3.0, 3.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.tensor([[4.0, 4.0, 9.0, 9.0]]), "labels": torch.tensor([2])},  # clipped to 2 x 2
    ]
    rows = constraint_values(probs, targets, band_width=5)
    assert rows[0]["empty"].tolist() == [0.25 * 36, 0.25 * 27]
    assert rows[0]["tight"].tolist() == [3 - 0.25 * 9, 3 - 0.25 * 9]
    assert rows[1]["tight"].tolist() == [2 - 0.25 * 4, 2 - 0.25 * 4]
    # the loss averages over rows: two identical rows give the loss of one
    loss = BoxConstraintLoss()
    one = loss(probs[:1], targets[:1])["box"]
    both = loss(torch.cat([probs[:1], probs[:1]]), [targets[0], targets[0]])["box"]
    assert both.item() == pytest.approx(one.item())
    with pytest.raises(ValueError, match="box label 3"):
        constraint_values(probs[:1], [{"boxes": torch.tensor([[0.0, 0, 1, 1]]), "labels": torch.tensor([3])}])
    with pytest.raises(ValueError, match="one entry per row"):
        constraint_values(probs, targets[:1])


def test_t_grows_per_epoch():
    loss = BoxConstraintLoss(t=5.0, t_growth=1.1)
    assert loss.t_at(0) == 5.0 and loss.t_at(3) == pytest.approx(5 * 1.1**3)
    assert BoxConstraintLoss(t_growth=2.0, t_max=15.0).t_at(1) == 10.0
    assert BoxConstraintLoss(t_growth=2.0, t_max=15.0).t_at(2) == 15.0
    fg = torch.zeros(8, 8)
    got = loss(_probs(fg), _target(BOX), epoch=2)["box_tight"].item()
    t2 = 5 * 1.1**2
    assert got == pytest.approx(sum(t2 * v + (2 * math.log(t2) + 1) / t2 for v in (4, 3)) / 64)


@pytest.mark.parametrize(
    ("kw", "name"),
    [
        ({"band_width": 0}, "band_width"),
        ({"band_width": 2.5}, "band_width"),
        ({"size_bounds": (0.9, 0.5)}, "size_bounds"),
        ({"size_bounds": (0.5,)}, "size_bounds"),
        ({"t": -1.0}, "t must"),
        ({"t_growth": 0.9}, "t_growth"),
        ({"t_max": 1.0}, "t_max"),
        ({"weight": -1.0}, "weight"),
        ({"emptiness_weight": float("nan")}, "emptiness_weight"),
    ],
)
def test_options_are_checked(kw, name):
    with pytest.raises(ValueError, match=name):
        BoxConstraintLoss(**kw)


def test_options_are_keyword_only():
    with pytest.raises(TypeError):
        BoxConstraintLoss(5)  # type: ignore[misc]


# -- gradients ----------------------------------------------------------------------------------------
def test_optimising_the_loss_moves_the_prediction_into_the_box():
    torch.manual_seed(0)
    logits = (torch.randn(1, 2, 16, 16) + torch.tensor([2.0, -2.0])[None, :, None, None]).requires_grad_(True)
    target = _target([4.0, 5.0, 10.0, 12.0])  # columns 4..9, rows 5..11
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[5:12, 4:10] = True
    loss = BoxConstraintLoss(band_width=2, size_bounds=(0.5, 0.9))
    opt = torch.optim.Adam([logits], lr=0.1)

    def means():
        fg = torch.softmax(logits, dim=1)[0, 1].detach()
        return fg[inside].mean().item(), fg[~inside].mean().item()

    start_in, start_out = means()
    assert start_in < 0.2 and start_out < 0.2  # the foreground starts faint everywhere
    for _ in range(60):
        opt.zero_grad()
        loss(torch.softmax(logits, dim=1), target)["box"].backward()
        opt.step()
    end_in, end_out = means()
    assert 0.6 < end_in < 0.9 and end_out < 0.01  # filled up to the size bound, emptied outside
    (row,) = constraint_values(torch.softmax(logits, dim=1).detach(), target, band_width=2, size_bounds=(0.5, 0.9))
    assert row["tight"].max() < 0 and row["size"].max() < 0 and row["empty"].item() < 1  # all constraints met
