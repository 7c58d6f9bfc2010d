"""Mean validation Dice on target-centred crops (drives the LR schedule, early stopping, best checkpoint).

Each validation case contributes every slice that holds target, cropped to the training patch size
and centred on the union of that slice's target boxes (no jitter, flips or noise), like the paper's
patches. Intersections and sums are accumulated over a case's crops, giving one Dice per case and
class (``2 |P & G| / (|P| + |G|)`` with the argmax label); the mean over cases, then over classes,
is the validation Dice. Under DDP each process handles a share of the crops and the sums are added.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from model_export.data.sampling import PatchDataset, collate_patches
from model_export.nets import SegmentationModel
from model_export.training.distributed import DistInfo, all_reduce_sum
from model_export.training.step import autocast


@torch.no_grad()
def crop_dice(
    module: SegmentationModel,
    dataset: PatchDataset,
    *,
    device: torch.device,
    batch_size: int = 16,
    amp: bool = False,
    dist_info: DistInfo | None = None,
) -> dict:
    """Validation Dice of ``module`` on ``dataset`` (built with ``augment=False``).

    Returns:
        ``{"dice": mean, "per_class": [C floats], "per_case": {case_id: [C floats]}}``; NaN entries
        mark a case/class with neither target nor prediction.
    """
    dist_info = dist_info or DistInfo()
    was_training = module.training
    module.eval()
    num_classes = module.config.num_classes
    case_ids = [v.case.id for v in dataset.volumes]
    stats = torch.zeros(len(case_ids), num_classes, 3, dtype=torch.float64)
    mine = list(range(dist_info.rank, len(dataset), dist_info.world_size))
    for start in range(0, len(mine), batch_size):
        idx = mine[start : start + batch_size]
        batch = collate_patches([dataset[i] for i in idx])
        with autocast(device, amp):
            probs = module.segment(batch["image"].to(device))
        pred = probs.argmax(dim=1).cpu()
        for row, i in enumerate(idx):
            vi = dataset.items[i][0]
            p, g = pred[row], batch["label"][row]
            for c in range(1, num_classes + 1):
                pc, gc = p == c, g == c
                stats[vi, c - 1, 0] += float((pc & gc).sum())
                stats[vi, c - 1, 1] += float(pc.sum())
                stats[vi, c - 1, 2] += float(gc.sum())
    stats = all_reduce_sum(stats.to(device), dist_info).cpu()
    if was_training:
        module.train()
    denom = stats[..., 1] + stats[..., 2]
    dice = torch.where(denom > 0, 2 * stats[..., 0] / denom.clamp(min=1), torch.full_like(denom, math.nan)).numpy()
    with np.errstate(all="ignore"):
        per_class = [
            float(np.nanmean(dice[:, c])) if np.isfinite(dice[:, c]).any() else math.nan for c in range(num_classes)
        ]
    finite = [v for v in per_class if math.isfinite(v)]
    return {
        "dice": float(np.mean(finite)) if finite else 0.0,
        "per_class": per_class,
        "per_case": {cid: dice[i].tolist() for i, cid in enumerate(case_ids)},
    }
