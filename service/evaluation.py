"""Scores of a segmentation against a reference, and per-class summaries of a label volume.

The metrics and their convention for empty masks are those of ``msdn_core.metrics`` (one module for
training and serving). "overall" scores foreground (label > 0) against foreground; "mean_dice"
averages the classes that have a Dice.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from msdn_core.metrics import bounding_window, mean, overlap, voxel_ml


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


def _label(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """Connected-component labels, in uint16 when they fit (half the memory of the default int32)."""
    try:
        return ndimage.label(mask, structure=structure, output=np.uint16)[0]
    except RuntimeError:  # more than 65535 components
        return ndimage.label(mask, structure=structure)[0]


def components(
    labels: np.ndarray, *, spacing: Sequence[float], class_names: Sequence[str], limit: int
) -> tuple[list[dict], bool]:
    """26-connected components of each class, largest first, at most ``limit``.

    Each has its class, voxel count, volume (mL) and 3D box ``[x1, y1, z1, x2, y2, z2]`` in the
    continuous pixel convention (``stop`` = last index + 1). Returns (components, truncated).
    """
    ml = voxel_ml(spacing)
    structure = ndimage.generate_binary_structure(3, 3)
    found: list[dict] = []
    window = bounding_window(labels)
    if window is None:
        return found, False
    labels = labels[window]  # the components lie in the foreground's bounding box
    origin = [w.start for w in window]
    for value, name in enumerate(class_names, start=1):
        mask = labels == value
        if not mask.any():
            continue
        lab = _label(mask, structure)
        for k, box in enumerate(ndimage.find_objects(lab), start=1):
            if box is None:
                continue
            size = int(np.count_nonzero(lab[box] == k))  # counted in its box: no volume-sized histogram
            zs, ys, xs = (slice(s.start + o, s.stop + o) for s, o in zip(box, origin, strict=True))
            found.append(
                {
                    "class_value": value,
                    "class_name": name,
                    "voxels": size,
                    "volume_ml": size * ml,
                    "box": [xs.start, ys.start, zs.start, xs.stop, ys.stop, zs.stop],
                }
            )
    found.sort(key=lambda c: -c["voxels"])
    return found[:limit], len(found) > limit
