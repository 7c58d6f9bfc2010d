"""Whole-series validation: the model run over whole slices of the validation series.

Target-centred crops (``validation.crop_dice``) never show the model the rest of the chest, so a
model selected on them can be useless on a whole series (issue 9). This pass segments whole axial
slices (padded to a multiple of 16 with the case's lowest value, ``msdn_core.crop.pad_to_multiple``)
of every strong validation case:

* every slice that holds foreground, evenly subsampled to at most ``max_fg_slices`` per case;
* plus ``negative_slices`` slices without foreground, evenly spaced over the case's other slices
  (nodule-free cases give only these).

Per case, intersections and sums over the sampled slices give the whole-series Dice (argmax label,
foreground classes pooled); false-positive components are the 2D connected components of the
prediction (any foreground class) on the sampled slices that touch no foreground of the reference.

``score = mean series Dice over cases with foreground - fp_penalty x mean false-positive components
per case (all cases)``; with the default penalty 0.02 a case with 5 spurious blobs costs 0.1 Dice.
The score drives the learning-rate schedule, early stopping and the best checkpoint when
``TrainConfig.selection == "series"``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import ndimage

from model_export.nets import SIZE_MULTIPLE, SegmentationModel
from model_export.training.step import autocast
from msdn_core.card import Normalization
from msdn_core.crop import pad_to_multiple, unpad


def pick_slices(fg: np.ndarray, *, max_fg_slices: int, negative_slices: int) -> list[int]:
    """Slices to evaluate from a (Z,) foreground flag: foreground ones (evenly subsampled) + fixed negatives."""
    pos = np.flatnonzero(fg)
    neg = np.flatnonzero(~fg)
    if len(pos) > max_fg_slices:
        pos = pos[np.round(np.linspace(0, len(pos) - 1, max_fg_slices)).astype(int)]
    if len(neg) > negative_slices:
        neg = neg[np.round(np.linspace(0, len(neg) - 1, negative_slices)).astype(int)] if negative_slices else neg[:0]
    return sorted(set(pos.tolist()) | set(neg.tolist()))


@torch.no_grad()
def series_scores(
    module: SegmentationModel,
    volumes: Sequence,
    normalization: Normalization,
    *,
    device: torch.device,
    max_fg_slices: int = 32,
    negative_slices: int = 8,
    fp_penalty: float = 0.02,
    batch_size: int = 4,
    amp: bool = False,
) -> dict:
    """Whole-series validation (module docstring) of ``volumes`` (``sampling._Volume`` with masks).

    Returns:
        ``{"score", "dice", "fp_per_case", "slices", "per_case": {case_id: {"dice", "fp"}}}``; ``dice``
        is NaN when no case has foreground.
    """
    was_training = module.training
    module.eval()
    per_case = {}
    n_slices = 0
    try:
        for vol in volumes:
            if vol.mask is None:
                continue
            fg = vol.mask.reshape(vol.mask.shape[0], -1).any(axis=1)
            zs = pick_slices(fg, max_fg_slices=max_fg_slices, negative_slices=negative_slices)
            n_slices += len(zs)
            inter = pred_sum = ref_sum = 0
            fp = 0
            for start in range(0, len(zs), batch_size):
                chunk = zs[start : start + batch_size]
                x, shape = pad_to_multiple(vol.image[chunk], SIZE_MULTIPLE, vol.fill)
                x = normalization.apply(x)[:, None]
                with autocast(device, amp):
                    probs = module.segment(torch.from_numpy(np.ascontiguousarray(x)).to(device))
                pred = unpad(probs.argmax(dim=1).cpu().numpy(), shape) > 0
                for row, z in enumerate(chunk):
                    ref = vol.mask[z] > 0
                    p = pred[row]
                    inter += int((p & ref).sum())
                    pred_sum += int(p.sum())
                    ref_sum += int(ref.sum())
                    if p.any():
                        comps, n = ndimage.label(p)
                        if n:
                            hit = np.unique(comps[ref & (comps > 0)])
                            fp += n - len(hit)
            dice = 2 * inter / (pred_sum + ref_sum) if ref_sum else math.nan
            per_case[vol.case.id] = {"dice": dice, "fp": fp}
    finally:
        if was_training:
            module.train()
    dices = [v["dice"] for v in per_case.values() if math.isfinite(v["dice"])]
    mean_dice = float(np.mean(dices)) if dices else math.nan
    fp_mean = float(np.mean([v["fp"] for v in per_case.values()])) if per_case else 0.0
    score = (mean_dice if dices else 0.0) - fp_penalty * fp_mean
    return {"score": score, "dice": mean_dice, "fp_per_case": fp_mean, "slices": n_slices, "per_case": per_case}
