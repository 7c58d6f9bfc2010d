"""Segmentation metrics against a reference mask, and per-class summaries of a label volume.

Definitions (per class c, on the boolean masks P = (pred == c), R = (ref == c)):

* Dice = 2|P and R| / (|P| + |R|); IoU = |P and R| / |P or R|.
* HD95 (mm): surfaces are the mask voxels with a 6-connected neighbour outside the mask (3D); the
  distance from each surface voxel of one mask to the nearest surface voxel of the other is
  measured with the voxel spacing (``scipy.ndimage.distance_transform_edt``); HD95 is the larger of
  the two directed 95th percentiles (as MONAI's ``compute_hausdorff_distance(percentile=95)``).
* A class empty in both masks has no Dice/IoU/HD95 (``None``) and is left out of the mean; empty in
  exactly one gives Dice = IoU = 0 and HD95 = ``None`` (infinite).
* "overall" scores foreground (label > 0) against foreground; "mean_dice" averages the classes.
* Volumes in mL = voxels x sz x sy x sx / 1000.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from scipy import ndimage


def _bounding_window(mask: np.ndarray, margin: int = 0) -> Optional[tuple[slice, ...]]:
    """Slices of the bounding box of a mask's non-zero voxels (plus ``margin``), or None when empty."""
    window = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(j for j in range(mask.ndim) if j != axis)))
        if not hits.size:
            return None
        window.append(slice(max(int(hits[0]) - margin, 0), int(hits[-1]) + 1 + margin))
    return tuple(window)


def _counts(labels: np.ndarray, num_classes: int) -> list[int]:
    """Voxels of each label 0..C (labels 1..C counted in the slices holding any; 0 is the rest)."""
    if labels.ndim == 0 or labels.size == 0:
        return [int(np.count_nonzero(labels == v)) for v in range(num_classes + 1)]
    occupied = labels.reshape(labels.shape[0], -1).any(axis=1)
    fg = labels[occupied]
    counts = [int(np.count_nonzero(fg == v)) for v in range(1, num_classes + 1)]
    return [int(labels.size) - sum(counts), *counts]


def _crop_to_union(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both masks cut to the bounding box of their union, with a one-voxel margin."""
    window = _bounding_window(a | b, margin=1)
    assert window is not None
    return a[window], b[window]


def _surface(mask: np.ndarray) -> np.ndarray:
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~eroded


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> Optional[float]:
    """95th-percentile symmetric Hausdorff distance in mm; ``None`` when either mask is empty."""
    pred, ref = pred.astype(bool), ref.astype(bool)
    if not pred.any() or not ref.any():
        return None
    pred, ref = _crop_to_union(pred, ref)
    sp, sr = _surface(pred), _surface(ref)
    to_ref = ndimage.distance_transform_edt(~sr, sampling=spacing)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=spacing)
    return float(max(np.percentile(to_ref[sp], 95), np.percentile(to_pred[sr], 95)))


def overlap(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict[str, Optional[float]]:
    """Dice, IoU and HD95 of two boolean masks (module docstring for empty masks)."""
    p, r = int(pred.sum()), int(ref.sum())
    if p == 0 and r == 0:
        return {"dice": None, "iou": None, "hd95_mm": None}
    inter = int(np.logical_and(pred, ref).sum())
    return {
        "dice": 2.0 * inter / (p + r),
        "iou": inter / (p + r - inter),
        "hd95_mm": hd95(pred, ref, spacing),
    }


def evaluate(pred: np.ndarray, ref: np.ndarray, *, spacing: Sequence[float], class_names: Sequence[str]) -> dict:
    """Per-class and overall scores of label volumes ``pred`` against ``ref`` (same shape).

    Returns:
        ``{"classes": [{value, name, dice, iou, hd95_mm, volume_ml, reference_volume_ml}], "overall":
        {dice, iou, hd95_mm, volume_ml, reference_volume_ml}, "mean_dice"}``.
    """
    if pred.shape != ref.shape:
        raise ValueError(f"pred {pred.shape} and ref {ref.shape} differ in shape")
    voxel_ml = float(np.prod(spacing)) / 1000.0
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
                "volume_ml": float(pred_counts[value]) * voxel_ml,
                "reference_volume_ml": float(ref_counts[value]) * voxel_ml,
            }
        )
    fg_pred, fg_ref = pred > 0, ref > 0
    overall = {
        **overlap(fg_pred, fg_ref, spacing),
        "volume_ml": float(fg_pred.sum()) * voxel_ml,
        "reference_volume_ml": float(fg_ref.sum()) * voxel_ml,
    }
    dices = [c["dice"] for c in classes if c["dice"] is not None]
    return {"classes": classes, "overall": overall, "mean_dice": float(np.mean(dices)) if dices else None}


def class_summary(labels: np.ndarray, *, spacing: Sequence[float], class_names: Sequence[str]) -> list[dict]:
    """Voxel count and volume (mL) of each class."""
    counts = _counts(labels, len(class_names))
    voxel_ml = float(np.prod(spacing)) / 1000.0
    return [
        {"value": v, "name": n, "voxels": int(counts[v]), "volume_ml": float(counts[v]) * voxel_ml}
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
    voxel_ml = float(np.prod(spacing)) / 1000.0
    structure = ndimage.generate_binary_structure(3, 3)
    found: list[dict] = []
    window = _bounding_window(labels)
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
                    "volume_ml": size * voxel_ml,
                    "box": [xs.start, ys.start, zs.start, xs.stop, ys.stop, zs.stop],
                }
            )
    found.sort(key=lambda c: -c["voxels"])
    return found[:limit], len(found) > limit
