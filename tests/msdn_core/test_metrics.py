"""msdn_core.metrics against MONAI's metrics (an independent implementation) and values by hand.

MONAI is used only here; the core itself is torch-free.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from msdn_core.metrics import class_scores, hd95, mean, overlap, volume_ml

SPACING = (2.5, 0.7, 0.45)  # anisotropic (sz, sy, sx) mm


def _monai(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[float, float, float]:
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics")
    p = torch.from_numpy(np.stack([~pred, pred])[None].astype(np.float32))
    r = torch.from_numpy(np.stack([~ref, ref])[None].astype(np.float32))
    dice = metrics.DiceMetric(include_background=False, reduction="none")(p, r)
    iou = metrics.MeanIoU(include_background=False, reduction="none")(p, r)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hd = metrics.compute_hausdorff_distance(p, r, include_background=False, percentile=95, spacing=list(spacing))
    return float(dice[0, 0]), float(iou[0, 0]), float(hd[0, 0])


def _blob(rng: np.random.Generator, shape, count: int) -> np.ndarray:
    from scipy import ndimage

    mask = np.zeros(shape, bool)
    for _ in range(count):
        c = [int(rng.integers(2, s - 2)) for s in shape]
        r = [int(rng.integers(1, 4)) for _ in shape]
        mask[tuple(slice(max(ci - ri, 0), ci + ri + 1) for ci, ri in zip(c, r, strict=True))] = True
    return ndimage.binary_opening(mask) | mask if rng.random() < 0.5 else mask


@pytest.mark.parametrize("seed", range(6))
def test_random_masks_agree_with_monai(seed):
    rng = np.random.default_rng(seed)
    shape = (9, 30, 26)
    pred, ref = _blob(rng, shape, 3), _blob(rng, shape, 3)
    ours = overlap(pred, ref, SPACING)
    dice, iou, hd = _monai(pred, ref, SPACING)
    assert ours["dice"] == pytest.approx(dice, abs=1e-6)
    assert ours["iou"] == pytest.approx(iou, abs=1e-6)
    assert ours["hd95_mm"] == pytest.approx(hd, abs=1e-4)


def test_hand_made_masks_agree_with_monai_and_by_hand():
    ref = np.zeros((5, 12, 12), bool)
    pred = np.zeros_like(ref)
    ref[2, 4:8, 2:6] = True  # 16 voxels
    pred[2, 4:8, 4:8] = True  # 16 voxels, 8 shared
    ours = overlap(pred, ref, SPACING)
    assert ours["dice"] == pytest.approx(2 * 8 / 32) and ours["iou"] == pytest.approx(8 / 24)
    dice, iou, hd = _monai(pred, ref, SPACING)
    assert (ours["dice"], ours["iou"]) == (pytest.approx(dice), pytest.approx(iou))
    assert ours["hd95_mm"] == pytest.approx(hd, abs=1e-4)
    # One voxel each, 3 slices apart: the distance is 3 x 2.5 mm along z only.
    a, b = np.zeros((6, 4, 4), bool), np.zeros((6, 4, 4), bool)
    a[1, 2, 2], b[4, 2, 2] = True, True
    assert hd95(a, b, SPACING) == pytest.approx(7.5)
    assert _monai(a, b, SPACING)[2] == pytest.approx(7.5)


def test_empty_mask_convention():
    empty = np.zeros((3, 5, 5), bool)
    full = empty.copy()
    full[1, 1:3, 1:3] = True
    assert overlap(empty, empty, SPACING) == {"dice": None, "iou": None, "hd95_mm": None}
    assert overlap(empty, full, SPACING) == {"dice": 0.0, "iou": 0.0, "hd95_mm": None}
    assert overlap(full, empty, SPACING) == {"dice": 0.0, "iou": 0.0, "hd95_mm": None}
    scores = class_scores(full.astype(np.uint8), full.astype(np.uint8), 2, SPACING)
    assert scores["dice"] == [1.0, None] and scores["hd95"] == [0.0, None]
    assert mean(scores["dice"]) == 1.0 and mean([None, None]) is None


def test_volume_in_millilitres_and_spacing_checked():
    mask = np.zeros((4, 10, 10), bool)
    mask[:2, :5, :4] = True  # 40 voxels of 2.5 x 0.7 x 0.45 mm^3
    assert volume_ml(mask, SPACING) == pytest.approx(40 * 2.5 * 0.7 * 0.45 / 1000)
    with pytest.raises(ValueError, match="spacing"):
        overlap(mask, mask, (1.0, 1.0))
