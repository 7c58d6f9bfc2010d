"""The one metrics module: Dice, IoU, HD95 (mm) and volumes (mL) of label masks. Torch-free.

Definitions (per class c, on the boolean masks P = (pred == c), R = (ref == c)):

* Dice = 2|P and R| / (|P| + |R|); IoU = |P and R| / |P or R|.
* HD95 (mm): surfaces are the mask voxels with a face-connected neighbour outside the mask; the
  distance from each surface voxel of one mask to the nearest surface voxel of the other is measured
  with the voxel spacing (``scipy.ndimage.distance_transform_edt(sampling=spacing)``); HD95 is the
  larger of the two directed 95th percentiles (as MONAI's ``compute_hausdorff_distance(percentile=95)``,
  checked against it in ``tests/msdn_core/test_metrics.py``).
* Empty masks, the one convention (training evaluation, the service's answers and reports):
  empty in both -> Dice, IoU and HD95 are ``None`` (JSON ``null``) and the class is left out of means;
  empty in exactly one -> Dice = IoU = 0 and HD95 ``None`` (counted as "missing HD95" by summaries).
* Volume (mL) = voxels x product of the spacing (mm) / 1000.

Spacing is given per array axis in mm, e.g. (sz, sy, sx) for a (Z, Y, X) volume.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Optional

import numpy as np
from scipy import ndimage


def bounding_window(mask: np.ndarray, margin: int = 0) -> Optional[tuple[slice, ...]]:
    """Slices of the bounding box of a mask's non-zero voxels (plus ``margin``), or None when empty."""
    window = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(j for j in range(mask.ndim) if j != axis)))
        if not hits.size:
            return None
        window.append(slice(max(int(hits[0]) - margin, 0), int(hits[-1]) + 1 + margin))
    return tuple(window)


def _surface(mask: np.ndarray) -> np.ndarray:
    eroded = ndimage.binary_erosion(mask, structure=ndimage.generate_binary_structure(mask.ndim, 1), border_value=0)
    return mask & ~eroded


def _check_spacing(spacing: Sequence[float], ndim: int) -> list[float]:
    values = [float(s) for s in spacing]
    if len(values) != ndim or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing must be {ndim} positive numbers (mm per array axis), got {list(spacing)}")
    return values


def hd95(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> Optional[float]:
    """95th-percentile symmetric Hausdorff distance in mm; ``None`` when either mask is empty."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    sampling = _check_spacing(spacing, pred.ndim)
    if not pred.any() or not ref.any():
        return None
    window = bounding_window(pred | ref, margin=1)
    assert window is not None
    pred, ref = pred[window], ref[window]
    sp, sr = _surface(pred), _surface(ref)
    to_ref = ndimage.distance_transform_edt(~sr, sampling=sampling)
    to_pred = ndimage.distance_transform_edt(~sp, sampling=sampling)
    return float(max(np.percentile(to_ref[sp], 95), np.percentile(to_pred[sr], 95)))


def overlap(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]) -> dict[str, Optional[float]]:
    """``{"dice", "iou", "hd95_mm"}`` of two boolean masks (module docstring for empty masks)."""
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    if pred.shape != ref.shape:
        raise ValueError(f"pred {pred.shape} and ref {ref.shape} differ in shape")
    p, r = int(np.count_nonzero(pred)), int(np.count_nonzero(ref))
    if p == 0 and r == 0:
        _check_spacing(spacing, pred.ndim)
        return {"dice": None, "iou": None, "hd95_mm": None}
    inter = int(np.count_nonzero(pred & ref))
    return {"dice": 2.0 * inter / (p + r), "iou": inter / (p + r - inter), "hd95_mm": hd95(pred, ref, spacing)}


def voxel_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in mL (spacing in mm)."""
    return float(np.prod([float(s) for s in spacing])) / 1000.0


def volume_ml(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Volume of a boolean mask's voxels in mL."""
    return float(np.count_nonzero(mask)) * voxel_ml(spacing)


def class_scores(
    pred: np.ndarray, ref: np.ndarray, num_classes: int, spacing: Sequence[float]
) -> dict[str, list[Optional[float]]]:
    """Dice, IoU and HD95 (mm) of each class 1..C of two label volumes: ``{"dice", "iou", "hd95"}`` lists."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes!r}")
    out: dict[str, list[Optional[float]]] = {"dice": [], "iou": [], "hd95": []}
    for value in range(1, num_classes + 1):
        scores = overlap(pred == value, ref == value, spacing)
        out["dice"].append(scores["dice"])
        out["iou"].append(scores["iou"])
        out["hd95"].append(scores["hd95_mm"])
    return out


def mean(values: Sequence[Optional[float]]) -> Optional[float]:
    """Mean of the values that are not ``None`` (``None`` when there are none)."""
    kept = [float(v) for v in values if v is not None]
    return float(np.mean(kept)) if kept else None


__all__ = ["bounding_window", "class_scores", "hd95", "mean", "overlap", "volume_ml", "voxel_ml"]
