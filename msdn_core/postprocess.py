"""Post-processing of a label volume: 3D connected components, minimum volume, candidate filter, scores.

Steps (:func:`postprocess`), per class c of a (Z, Y, X) label volume:

1. The voxels of class c are split into 26-connected 3D components.
2. A component smaller than ``min_volume_mm3`` (voxels x sz x sy x sx) is removed (set to 0).
3. With ``candidate_boxes`` and ``keep_overlapping``: a component with no voxel inside any candidate
   box ``[x1, y1, z1, x2, y2, z2]`` of its class is removed.
4. Each kept component gets a ``score``: the largest score of the candidates of its class whose box
   holds one of its voxels (proposals: the detection score), else, with ``score_volume``, the largest
   value of that volume over the component (whole slices: the highest foreground probability), else
   None (request boxes).
5. **Confirmation by the segmentation** (``confirm``, proposals): with ``candidate_boxes`` and
   ``score_volume`` (the whole-slice foreground probability of the same model run), a component
   that got a detection score ``d`` in step 4 also gets ``segmentation_score`` ``s``, the mean of
   ``score_volume`` over its voxels, and its ``score`` becomes ``d x s``: a candidate counts when the
   detector and the segmentation on whole slices both see it (the two networks agree). The component
   keeps ``d`` as ``detection_score``. With ``min_score``, a component scoring under it is removed.
   Since ``s <= 1``, ``d x s >= t`` implies ``d >= t``: the candidates under a detection threshold t
   can never give a component that reaches t, so thresholding candidates at t before segmenting
   and components at t after gives the same components as segmenting every candidate.

Components are listed largest first with class, voxels, volume (mL), 3D box
``[x1, y1, z1, x2, y2, z2]`` (continuous pixel coordinates: stop = last index + 1), ``centre``
``[x, y, z]`` (voxel-centre mean, pixel indices) and ``score``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

STRUCTURE_26 = ndimage.generate_binary_structure(3, 3)


@dataclass(frozen=True)
class CandidateBox:
    """A scored 3D box of one class: ``box`` [x1, y1, z1, x2, y2, z2] pixels."""

    label: int
    box: tuple[float, float, float, float, float, float]
    score: float


def _windows(labels: np.ndarray) -> list[tuple[slice, slice, slice]]:
    """(z, y, x) windows holding every non-zero voxel of ``labels`` (Z, Y, X), one per run of
    consecutive non-empty slices, each cut to its run's rows and columns.

    No 26-connected component crosses an empty slice, so the runs are labelled apart (box mode:
    the boxes' slices, not the volume between them). uint8 maxima: no boolean temporary of the volume.
    """
    depth = labels.shape[0]
    if not labels.size:
        return []
    zs = np.flatnonzero(labels.reshape(depth, -1).max(axis=1))
    out = []
    for run in np.split(zs, np.flatnonzero(np.diff(zs) > 1) + 1) if zs.size else []:
        z0, z1 = int(run[0]), int(run[-1]) + 1
        plane = labels[z0:z1].max(axis=0)
        ys, xs = np.flatnonzero(plane.max(axis=1)), np.flatnonzero(plane.max(axis=0))
        out.append((slice(z0, z1), slice(int(ys[0]), int(ys[-1]) + 1), slice(int(xs[0]), int(xs[-1]) + 1)))
    return out


def label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """26-connected components of a boolean (Z, Y, X) mask: (labels, count).

    Labels are uint16 when they fit (half the memory of int32), else int32.
    """
    try:
        lab, count = ndimage.label(mask, structure=STRUCTURE_26, output=np.uint16)
    except RuntimeError:  # more than 65535 components
        lab, count = ndimage.label(mask, structure=STRUCTURE_26)
    return lab, int(count)


def _box_slices(box: Sequence[float], shape: Sequence[int]) -> tuple[slice, slice, slice]:
    """(z, y, x) index slices of the voxels a continuous box touches, cut to the volume."""
    x1, y1, z1, x2, y2, z2 = box
    return tuple(  # type: ignore[return-value]
        slice(max(int(np.floor(lo)), 0), min(int(np.ceil(hi)), n))
        for lo, hi, n in ((z1, z2, shape[0]), (y1, y2, shape[1]), (x1, x2, shape[2]))
    )


def postprocess(
    labels: np.ndarray,
    *,
    spacing: Sequence[float],
    class_names: Sequence[str],
    min_volume_mm3: float = 0.0,
    candidate_boxes: Sequence[CandidateBox] = (),
    keep_overlapping: bool = False,
    score_volume: Optional[np.ndarray] = None,
    score_scale: float = 1.0,
    confirm: bool = False,
    min_score: Optional[float] = None,
    copy: bool = True,
) -> tuple[np.ndarray, list[dict]]:
    """Clean ``labels`` and list its scored components (module docstring).

    Args:
        labels: (Z, Y, X) uint8 class labels 0..C.
        spacing: (sz, sy, sx) mm.
        class_names: names of classes 1..C.
        min_volume_mm3: smallest component kept.
        candidate_boxes: scored 3D boxes (proposals) for the filter and the scores.
        keep_overlapping: drop components outside every candidate box of their class.
        score_volume: (Z, Y, X) per-voxel score (e.g. foreground probability), any numeric dtype.
        score_scale: factor from ``score_volume`` values to scores (1/255 for a uint8 probability).
        confirm: step 5: a component with a detection score is scored by detection x mean
            ``score_volume`` over it (needs ``score_volume``).
        min_score: remove components scoring under this (components without a score are kept).
        copy: clean a copy of ``labels``; False cleans a uint8 ``labels`` in place (no volume-sized
            copy: the service's labels are its own).

    Returns:
        (cleaned labels uint8 of the same shape, components largest first).
    """
    if min_volume_mm3 < 0:
        raise ValueError(f"min_volume_mm3 must be >= 0, got {min_volume_mm3!r}")
    if score_volume is not None and score_volume.shape != labels.shape:
        raise ValueError(f"score_volume {score_volume.shape} and labels {labels.shape} differ in shape")
    if confirm and score_volume is None:
        raise ValueError("confirm needs a score_volume (the whole-slice foreground probability)")
    voxel_mm3 = float(np.prod(spacing))
    out = labels if not copy and labels.dtype == np.uint8 else np.array(labels, dtype=np.uint8, copy=True)
    found: list[dict] = []
    windows = _windows(out)
    for value, name in enumerate(class_names, start=1):
        boxes = [c for c in candidate_boxes if c.label == value]
        for window in windows:  # in z order: components come in the raster order of one labelling
            origin = [w.start for w in window]
            sub = out[window]  # a view: removals write through to ``out``
            mask = sub == value
            if not mask.any():
                continue
            lab, _ = label_components(mask)
            for k, bbox in enumerate(ndimage.find_objects(lab), start=1):
                if bbox is None:
                    continue
                local = lab[bbox] == k
                size = int(np.count_nonzero(local))
                region = tuple(slice(s.start + o, s.stop + o) for s, o in zip(bbox, origin, strict=True))
                score: Optional[float] = None
                for cand in boxes:
                    zs, ys, xs = _box_slices(cand.box, labels.shape)
                    inter = tuple(
                        slice(max(a.start, b.start), min(a.stop, b.stop))
                        for a, b in zip((zs, ys, xs), region, strict=True)
                    )
                    if any(s.stop <= s.start for s in inter):
                        continue
                    rel = tuple(slice(i.start - r.start, i.stop - r.start) for i, r in zip(inter, region, strict=True))
                    if local[rel].any():
                        score = cand.score if score is None else max(score, cand.score)
                extra: dict = {}
                if confirm and score is not None and score_volume is not None:
                    seg = float(score_volume[region][local].mean(dtype=np.float64)) * float(score_scale)
                    extra = {"detection_score": score, "segmentation_score": seg}
                    score = score * seg
                too_small = size * voxel_mm3 < min_volume_mm3
                outside = keep_overlapping and score is None
                unconfirmed = min_score is not None and score is not None and score < min_score
                if too_small or outside or unconfirmed:
                    sub[bbox][local] = 0
                    continue
                if score is None and score_volume is not None:
                    score = float(score_volume[region][local].max()) * float(score_scale)
                idx = np.nonzero(local)
                centre = [float(idx[a].mean() + region[a].start) for a in (2, 1, 0)]
                zs, ys, xs = region
                found.append(
                    {
                        "class_value": value,
                        "class_name": name,
                        "voxels": size,
                        "volume_ml": size * voxel_mm3 / 1000.0,
                        "box": [xs.start, ys.start, zs.start, xs.stop, ys.stop, zs.stop],
                        "centre": centre,
                        "score": score,
                        **extra,
                    }
                )
    found.sort(key=lambda c: -c["voxels"])
    return out, found


__all__ = ["CandidateBox", "label_components", "postprocess"]
