"""Detection scoring the way nodule finding is scored (LUNA16): hits, FROC curve, CPM. Numpy only.

Definitions:

* A **candidate** is a scored point (its centre, voxel indices ``(z, y, x)``, rounded to the nearest
  voxel); it **hits** nodule k when that voxel belongs to nodule k of the reference instance labels.
* Each nodule is counted **once**: of the candidates hitting it, the best-scoring one is its true
  positive (at that score); the other candidates hitting it are ignored (neither true nor false
  positives). A candidate hitting no nodule is a **false positive**.
* Nodules left out of a subset (e.g. "nodules >= 6 mm") are *ignored* nodules: candidates hitting
  them count neither way, and they are not in the denominator (LUNA16's "irrelevant findings").
* The **FROC curve**: for every threshold t (each distinct candidate score, best first), sensitivity
  = nodules whose true-positive score >= t / nodules, and FP per scan = false positives with score
  >= t / scans. It starts at (0 FP, sensitivity 0).
* **Sensitivity at r FP per scan**: the largest sensitivity of a curve point with at most r false
  positives per scan (a step function, no interpolation).
* **CPM** (competition performance metric): the mean of the sensitivities at 1/8, 1/4, 1/2, 1, 2, 4
  and 8 false positives per scan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence

import numpy as np

#: The FP-per-scan operating points of the LUNA16 CPM.
FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass
class ScanMatch:
    """The candidates of one scan matched to its nodules.

    Attributes:
        nodules: ids of the scan's reference nodules.
        hits: nodule id -> score of its best hitting candidate.
        false_positives: scores of the candidates hitting no nodule.
    """

    nodules: list[int] = field(default_factory=list)
    hits: dict[int, float] = field(default_factory=dict)
    false_positives: list[float] = field(default_factory=list)


def match_candidates(
    candidates: Iterable[tuple[float, Sequence[float]]],
    instances: np.ndarray,
    *,
    nodules: Optional[Sequence[int]] = None,
) -> ScanMatch:
    """Match scored candidate centres to reference nodules (module docstring).

    Args:
        candidates: ``(score, (z, y, x))`` pairs; centres in voxel indices (floats are rounded; a
            centre outside the volume hits nothing).
        instances: (Z, Y, X) integer labels, 0 background, k > 0 nodule k.
        nodules: the scan's nodule ids (default: the non-zero values of ``instances``).
    """
    ids = [int(v) for v in (np.unique(instances[instances > 0]) if nodules is None else nodules)]
    match = ScanMatch(nodules=ids)
    shape = instances.shape
    for score, centre in candidates:
        idx = tuple(int(np.floor(float(c) + 0.5)) for c in centre)
        inside = all(0 <= i < n for i, n in zip(idx, shape, strict=True))
        k = int(instances[idx]) if inside else 0
        if k > 0 and k in ids:
            match.hits[k] = max(match.hits.get(k, -np.inf), float(score))
        elif k == 0:
            match.false_positives.append(float(score))
        # a hit on a nodule outside ``ids`` is ignored
    return match


@dataclass
class FROC:
    """An FROC curve: ``thresholds`` (descending), ``fp_per_scan`` and ``sensitivity`` per threshold."""

    thresholds: np.ndarray
    fp_per_scan: np.ndarray
    sensitivity: np.ndarray
    num_nodules: int
    num_scans: int

    def sensitivity_at(self, rate: float) -> float:
        """Largest sensitivity with at most ``rate`` false positives per scan."""
        ok = self.fp_per_scan <= rate + 1e-12
        return float(self.sensitivity[ok].max()) if ok.any() else 0.0

    def cpm(self, rates: Sequence[float] = FP_RATES) -> float:
        """Mean sensitivity over ``rates`` (the LUNA16 CPM by default)."""
        return float(np.mean([self.sensitivity_at(r) for r in rates]))

    def table(self, rates: Sequence[float] = FP_RATES) -> dict[str, float]:
        """``{"0.125": sens, ..., "8": sens, "cpm": mean}``."""
        out = {f"{r:g}": self.sensitivity_at(r) for r in rates}
        out["cpm"] = self.cpm(rates)
        return out


def froc(scans: Sequence[ScanMatch], *, include: Optional[Sequence[set[int]]] = None) -> FROC:
    """The FROC curve of matched scans.

    Args:
        scans: one ``ScanMatch`` per scan (a scan with no nodule still counts for FP per scan).
        include: per scan, the nodule ids of the subset scored; the others are ignored nodules.

    Raises:
        ValueError: no scan, or ``include`` of another length.
    """
    if not scans:
        raise ValueError("froc needs at least one scan")
    if include is not None and len(include) != len(scans):
        raise ValueError(f"include has {len(include)} entries for {len(scans)} scans")
    tp: list[float] = []
    fp: list[float] = []
    total = 0
    for i, scan in enumerate(scans):
        keep = set(scan.nodules) if include is None else set(include[i]) & set(scan.nodules)
        total += len(keep)
        tp += [s for k, s in scan.hits.items() if k in keep]
        fp += scan.false_positives
    tp_arr, fp_arr = np.sort(np.array(tp))[::-1], np.sort(np.array(fp))[::-1]
    thresholds = np.unique(np.concatenate([tp_arr, fp_arr]))[::-1]
    n_scans = len(scans)
    # counts of scores >= t, via searchsorted on the ascending arrays
    tp_asc, fp_asc = tp_arr[::-1], fp_arr[::-1]
    tp_count = tp_asc.size - np.searchsorted(tp_asc, thresholds, side="left")
    fp_count = fp_asc.size - np.searchsorted(fp_asc, thresholds, side="left")
    sens = tp_count / total if total else np.zeros(thresholds.size)
    return FROC(
        thresholds=np.concatenate([[np.inf], thresholds]),
        fp_per_scan=np.concatenate([[0.0], fp_count / n_scans]),
        sensitivity=np.concatenate([[0.0], sens]).astype(np.float64),
        num_nodules=total,
        num_scans=n_scans,
    )


__all__ = ["FP_RATES", "FROC", "ScanMatch", "froc", "match_candidates"]
