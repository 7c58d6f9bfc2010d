"""Scores of a segmentation against a reference, and per-class summaries of a label volume.

The metrics and their convention for empty masks are those of ``msdn_core.metrics`` (one module for
training and serving). "overall" scores foreground (label > 0) against foreground; "mean_dice"
averages the classes that have a Dice. Connected components (with scores) are
``msdn_core.postprocess``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from msdn_core.metrics import mean, overlap, voxel_ml


def _counts(labels: np.ndarray, num_classes: int) -> list[int]:
    """Voxels of each label 0..C (labels 1..C counted in the slices holding any; 0 is the rest)."""
    if labels.ndim == 0 or labels.size == 0:
        return [int(np.count_nonzero(labels == v)) for v in range(num_classes + 1)]
    occupied = labels.reshape(labels.shape[0], -1).any(axis=1)
    fg = labels[occupied]
    counts = [int(np.count_nonzero(fg == v)) for v in range(1, num_classes + 1)]
    return [int(labels.size) - sum(counts), *counts]


def evaluate(pred: np.ndarray, ref: np.ndarray, *, spacing: Sequence[float], class_names: Sequence[str]) -> dict:
    """Per-class and overall scores of label volumes ``pred`` against ``ref`` (same shape).

    Returns:
        ``{"classes": [{value, name, dice, iou, hd95_mm, volume_ml, reference_volume_ml}], "overall":
        {dice, iou, hd95_mm, volume_ml, reference_volume_ml}, "mean_dice"}``.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"pred {pred.shape} and ref {ref.shape} differ in shape")
    ml = voxel_ml(spacing)
    pred_counts = _counts(pred, len(class_names))
    ref_counts = _counts(ref, len(class_names))
    classes = []
    for value, name in enumerate(class_names, start=1):
        scores = overlap(pred == value, ref == value, spacing)
        classes.append(
            {
                "value": value,
                "name": name,
                **scores,
                "volume_ml": float(pred_counts[value]) * ml,
                "reference_volume_ml": float(ref_counts[value]) * ml,
            }
        )
    fg_pred, fg_ref = pred > 0, ref > 0
    overall = {
        **overlap(fg_pred, fg_ref, spacing),
        "volume_ml": float(fg_pred.sum()) * ml,
        "reference_volume_ml": float(fg_ref.sum()) * ml,
    }
    return {"classes": classes, "overall": overall, "mean_dice": mean([c["dice"] for c in classes])}


def class_summary(labels: np.ndarray, *, spacing: Sequence[float], class_names: Sequence[str]) -> list[dict]:
    """Voxel count and volume (mL) of each class."""
    counts = _counts(labels, len(class_names))
    ml = voxel_ml(spacing)
    return [
        {"value": v, "name": n, "voxels": int(counts[v]), "volume_ml": float(counts[v]) * ml}
        for v, n in enumerate(class_names, start=1)
    ]
