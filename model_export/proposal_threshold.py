"""Proposal score threshold calibration on validation series (``msdn calibrate``); not int8 calibration.

A detecting model's proposals mode keeps detector boxes scoring at least a threshold. A fixed 0.5
means nothing for a detector whose scores peak at 0.1, so the threshold is chosen per model, on the
validation series of its manifest, and stored in its card (``ModelCard.detection``,
``msdn_core.card.DetectionOperatingPoint``), where the service takes it as its default.

How it is chosen:

1. Every validation series goes through the service pipeline in ``proposals`` mode
   (``service.pipeline.segment_image``, post-processing included) with the proposal threshold at a
   low ``floor`` (0.01), so candidates are collected well below any useful operating point.
2. The answer's components are the candidates, scored by their detection score, and matched to the
   reference nodules as the whole-series benchmark does (``model_export.full_series.score_series``,
   ``msdn_core.froc.match_candidates``: a component hits a nodule when its centre voxel is in it; a
   nodule counts once, at its best-scoring hit; a component hitting no nodule is a false positive).
3. The threshold is **the lowest candidate score t at which the false-positive components per scan
   (those scoring >= t, over all validation series) are at most the target** (default 1.0):
   sensitivity only falls as t rises, so this is the most sensitive threshold within the target.
   Candidates tied at t are all kept. Deterministic: no search, no randomness; the mean whole-series
   Dice at t is reported (step 5), not optimised.
4. A series whose candidates reached ``max_candidates`` lost its lowest-scoring ones, so its false
   positives are only known above its lowest kept score: t is never chosen below that score.

Outcomes without a threshold (``ThresholdChoice.score_threshold`` None, ``reason`` says which):
no candidate at all; or the target unreachable: no threshold keeps both at most the target FP per
scan and at least one detected nodule (e.g. the top-scoring candidates are false positives, or every
hit scores below the false positives). The card is then left as it was (``msdn calibrate`` exits 1):
an uncalibrated model answers ``mode=auto`` with whole slices, never with an empty proposal mask.

5. The series are run again at t, with the settings the service uses, and the card records what
   those runs give (what the service answers): false-positive components per scan, sensitivity,
   mean whole-series Dice, and the extension threshold of the runs. Proposals use two thresholds
   (``msdn_core.proposals``): slice boxes are linked down to ``MSDN_PROPOSAL_EXTEND_THRESHOLD``
   (0.01) and a track is a candidate when its best slice reaches t. With that extension threshold
   equal to the floor (the defaults, both 0.01), the candidates at t are exactly the floor run's
   candidates scoring >= t, with the same slices, so the recorded numbers equal those of the floor
   run's components scoring >= t except where a dropped candidate's mask touched a kept one's
   (their components were joined). With a single threshold (``MSDN_PROPOSAL_EXTEND_THRESHOLD`` >= t)
   they differ: at t a candidate keeps only its slice boxes scoring >= t (it gets shorter, its
   nodule less covered). Measured on the default model (3 validation series, t = 0.1104): 0.33 FP
   per scan and sensitivity 0.75 either way, mean whole-series Dice 0.455 with two thresholds
   (0.456 for the floor run's components scoring >= t) against 0.237 with one. When the runs at t
   give more false positives than the target (joined or resampled masks split differently), the
   next candidate score up is run (at most ``max_steps``), so the card never records a missed target.

6. Confirmation (``--confirmation segmentation``): the components are scored by detection x their
   mean whole-slice foreground probability (``msdn_core.postprocess`` step 5) and the threshold is
   chosen on that score; the card records ``detection.confirmation`` so the service scores the same
   way. The floor-run equality of step 5 still holds: a confirmed score never exceeds the detection
   score, so the candidates under t (not segmented at t) could not have reached t.

Writing (``write_operating_point``): the fp32 file's embedded card and its sidecar (with the new
file SHA-256) are rewritten together; the fp16 / int8 variants next to it get the same block when
their card names the same checkpoint (``checkpoint_sha256``), else they are left alone and reported
(the service already ignores an int8 variant of another checkpoint).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from model_export.card_update import update_cards
from msdn_core.card import CONFIRMATIONS, DetectionCalibration, DetectionOperatingPoint
from msdn_core.froc import ScanMatch
from msdn_core.onnx_model import (
    ModelFileError,
    card_from_model,
    load_onnx,
    variant_path,
)

logger = logging.getLogger(__name__)

#: Detector score the validation candidates are collected down to.
DEFAULT_FLOOR = 0.01
#: False-positive components per scan allowed at the operating point.
DEFAULT_FP_PER_SCAN = 1.0
#: 3D candidates segmented per validation series (``MSDN_MAX_CANDIDATES`` of the calibration run).
DEFAULT_MAX_CANDIDATES = 20


@dataclass
class ThresholdChoice:
    """The chosen threshold and what it gives on the validation series.

    Attributes:
        score_threshold: the threshold, or None (``reason`` says why).
        fp_per_scan: false-positive components per scan at it (None without a threshold).
        sensitivity: share of the nodules detected at it (None without a threshold or nodules).
        series: scans.
        nodules: reference nodules.
        fp_per_scan_target: the target.
        reason: one line: how it was chosen, or why there is none.
    """

    score_threshold: Optional[float]
    fp_per_scan: Optional[float]
    sensitivity: Optional[float]
    series: int
    nodules: int
    fp_per_scan_target: float
    reason: str


def choose_threshold(
    scans: Sequence[ScanMatch],
    *,
    fp_per_scan_target: float = DEFAULT_FP_PER_SCAN,
    min_threshold: float = 0.0,
) -> ThresholdChoice:
    """The lowest candidate score with at most ``fp_per_scan_target`` false positives per scan.

    Args:
        scans: the matched candidates of every validation series (``msdn_core.froc.ScanMatch``).
        fp_per_scan_target: the largest false positives per scan allowed (>= 0).
        min_threshold: never choose below this (step 4 of the module docstring).

    Raises:
        ValueError: no scan, or a negative / non-finite target.
    """
    if not scans:
        raise ValueError("choose_threshold needs at least one scan")
    if not (math.isfinite(fp_per_scan_target) and fp_per_scan_target >= 0):
        raise ValueError(f"fp_per_scan_target must be a finite number >= 0, got {fp_per_scan_target!r}")
    n_scans = len(scans)
    n_nodules = sum(len(s.nodules) for s in scans)
    fps = np.sort(np.array([v for s in scans for v in s.false_positives], np.float64))
    hits = np.sort(np.array([v for s in scans for k, v in s.hits.items() if k in s.nodules], np.float64))
    scores = np.unique(np.concatenate([fps, hits]))
    none = ThresholdChoice(None, None, None, n_scans, n_nodules, float(fp_per_scan_target), "")
    if scores.size == 0:
        none.reason = "no candidate on the validation series: the detector proposes nothing above the floor"
        return none
    scores = scores[scores >= min_threshold]
    for t in scores:  # ascending: the first that meets the target is the lowest
        fp = float(fps.size - np.searchsorted(fps, t, side="left")) / n_scans  # candidates scoring >= t
        if fp > fp_per_scan_target + 1e-12:
            continue
        found = int(hits.size - np.searchsorted(hits, t, side="left"))
        if found == 0:
            break  # higher thresholds find no nodule either
        return ThresholdChoice(
            float(t),
            fp,
            found / n_nodules if n_nodules else None,
            n_scans,
            n_nodules,
            float(fp_per_scan_target),
            f"lowest candidate score with <= {fp_per_scan_target:g} FP components per scan"
            + (f" (not below {min_threshold:g}, where capped series lost candidates)" if min_threshold > 0 else ""),
        )
    none.reason = (
        f"target unreachable: no threshold keeps <= {fp_per_scan_target:g} false-positive components per scan "
        "and detects any nodule"
    )
    return none


@dataclass
class SeriesCandidates:
    """One validation series: its floor run's matched candidates, and the run at the chosen threshold.

    Attributes:
        case_id: the series.
        match: the floor run's components matched to the nodules.
        capped_at: lowest kept candidate score when the floor run reached ``max_candidates``
            (candidates were lost), else None.
        fp_components, detected, nodules, series_dice: the run at the chosen threshold (None before).
    """

    case_id: str
    match: ScanMatch
    capped_at: Optional[float]
    fp_components: Optional[int] = None
    detected: Optional[int] = None
    nodules: Optional[int] = None
    series_dice: Optional[float] = None


@dataclass
class Calibration:
    """``calibrate``'s outcome: the choice (from the floor runs), the per-series data and the card
    block with the numbers of the runs at the threshold (None when no threshold)."""

    choice: ThresholdChoice
    series: list[SeriesCandidates]
    point: Optional[DetectionOperatingPoint]


def _candidates_of(result: Any) -> list[tuple]:
    """The distinct 3D candidates of a proposals answer, from its per-slice detector boxes."""
    return sorted({(tuple(b.xyxy), b.label, b.score) for b in result.boxes if b.source == "detector"})


def calibrate(
    model_path: str | Path,
    cases: Sequence[Any],
    *,
    split: str = "val",
    fp_per_scan_target: float = DEFAULT_FP_PER_SCAN,
    floor: float = DEFAULT_FLOOR,
    max_candidates: int = DEFAULT_MAX_CANDIDATES,
    threads: int = 0,
    settings: Any = None,
    manifest: Optional[str] = None,
    confirmation: str = "none",
    precision: str = "fp32",
    max_steps: int = 5,
) -> Calibration:
    """Run the validation ``cases`` in proposals mode and choose the threshold (module docstring).

    Args:
        model_path: the fp32 ONNX model, with detection outputs.
        cases: ``model_export.full_series.BenchmarkCase`` (``load_cases(manifest, split=...)``).
        split: recorded in the card.
        fp_per_scan_target: false-positive components per scan allowed.
        floor: proposal threshold of the runs (candidates below it are not seen).
        max_candidates: 3D candidates segmented per series.
        threads: ONNX Runtime intra-op threads (0: its default).
        settings: ``service.settings.Settings`` for the other proposal settings (default: defaults,
            environment ignored); its threshold and ``max_candidates`` are replaced.
        manifest: recorded in the card.
        confirmation: the component score the threshold is chosen on, recorded in the card:
            ``none`` (the detection score) or ``segmentation`` (detection x mean whole-slice
            foreground probability, ``msdn_core.postprocess`` step 5).
        precision: ``fp32`` (the file itself) or ``int8``: the int8 variant ``<model>.int8.onnx`` is
            run, so the threshold is chosen on its own scores (quantisation moves detector scores);
            recorded as ``calibration.precision``, which the service requires before ``auto`` serves
            an int8 detector. Write it with ``write_operating_point(..., variant="int8")``.
        max_steps: runs at a threshold tried: when the runs at the chosen score give more false
            positives than the target (candidates cut at it, masks joined differently), the next
            candidate score up is run, so the card records a point its runs met.

    Raises:
        ValueError: no case, a model without detection outputs, or bad arguments.
    """
    from model_export.data.volumes import read_volume
    from model_export.full_series import read_image, reference_nodules, score_series
    from service.model import ModelRuntime
    from service.pipeline import segment_image
    from service.settings import Settings

    if not cases:
        raise ValueError("calibrate needs at least one validation series")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor must be in [0, 1], got {floor!r}")
    if max_candidates < 1:
        raise ValueError(f"max_candidates must be >= 1, got {max_candidates!r}")
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps!r}")
    settings = settings or Settings(_env_file=None, model_path=Path(model_path))
    if confirmation not in CONFIRMATIONS:
        raise ValueError(f"confirmation must be one of {CONFIRMATIONS}, got {confirmation!r}")
    if precision not in ("fp32", "int8"):
        raise ValueError(f"precision must be fp32 or int8, got {precision!r}")
    if precision == "int8" and not variant_path(Path(model_path), "int8").is_file():
        raise ValueError(f"no int8 variant {variant_path(Path(model_path), 'int8')} (msdn export --int8)")
    settings = settings.model_copy(
        update={
            "proposal_score_threshold": float(floor),
            "max_candidates": max_candidates,
            "proposal_confirmation": confirmation,
        }
    )
    if settings.proposal_extend_threshold > floor:
        logger.warning(
            "proposal extension threshold %g is above the floor %g: the runs at the chosen threshold link slice "
            "boxes only down to it (at most the threshold), so they can differ from the floor runs it is chosen on",
            settings.proposal_extend_threshold,
            floor,
        )
    runtime = ModelRuntime.load(
        model_path,
        providers=["CPUExecutionProvider"],
        precision=precision,
        intra_op_threads=threads,
        batch_size=settings.batch_size,
    )
    if runtime.card.precision != precision:
        raise ValueError(f"asked to calibrate {precision} but {runtime.card.precision} was loaded ({model_path})")
    if not runtime.has_detection:
        raise ValueError(f"{model_path} has no detection outputs: there is no proposal threshold to calibrate")
    series: list[SeriesCandidates] = []
    for i, case in enumerate(cases):
        image = read_image(case.image)
        mask = read_volume(case.mask, dtype=np.int16).array
        instances, nodules = reference_nodules(mask, image.spacing, case.meta)
        result = segment_image(image, runtime, settings, mode="proposals")
        scored = score_series(case.id, "proposals", result, instances, nodules, image.spacing, 0.0)
        found = _candidates_of(result)
        capped = min(c[2] for c in found) if len(found) >= max_candidates else None
        series.append(SeriesCandidates(case.id, scored.match, capped))
        logger.info(
            "%d/%d %s: %d nodules, %d candidates, %d components (%d hit), %d false positives%s",
            i + 1,
            len(cases),
            case.id,
            len(nodules),
            len(found),
            len(result.components),
            len(scored.match.hits),
            len(scored.match.false_positives),
            f", capped at score {capped:.4f}" if capped is not None else "",
        )
    lowest = max([s.capped_at for s in series if s.capped_at is not None], default=0.0)
    choice = choose_threshold([s.match for s in series], fp_per_scan_target=fp_per_scan_target, min_threshold=lowest)
    calibration = None
    for _ in range(max_steps):
        if choice.score_threshold is None:
            return Calibration(choice, series, None)
        # The numbers recorded are those of runs at the threshold, i.e. what the service answers (step 5).
        calibration = _measure_at(choice, cases, series, runtime, settings, split=split, floor=floor, manifest=manifest)
        if calibration.fp_per_scan <= choice.fp_per_scan_target + 1e-12:
            break
        # Candidates cut at the threshold, or their masks joined differently, gave more false positives
        # than the floor runs: the next candidate score up is tried, so the card never records a miss.
        logger.warning(
            "at threshold %.4g the runs give %.2f FP components per scan, over the %g target the floor runs "
            "met: trying the next candidate score up",
            choice.score_threshold,
            calibration.fp_per_scan,
            choice.fp_per_scan_target,
        )
        choice = choose_threshold(
            [s.match for s in series],
            fp_per_scan_target=fp_per_scan_target,
            min_threshold=float(np.nextafter(choice.score_threshold, np.inf)),
        )
    else:
        raise ValueError(
            f"no threshold met {fp_per_scan_target:g} FP components per scan in the runs at it after "
            f"{max_steps} candidate scores: raise max_steps or the target"
        )
    return Calibration(
        choice, series, DetectionOperatingPoint(choice.score_threshold, calibration, confirmation=confirmation)
    )


def _measure_at(
    choice: ThresholdChoice,
    cases: Sequence[Any],
    series: list[SeriesCandidates],
    runtime: Any,
    settings: Any,
    *,
    split: str,
    floor: float,
    manifest: Optional[str],
) -> DetectionCalibration:
    """Run every case at ``choice``'s threshold, fill ``series``' run fields, and return the numbers."""
    from model_export.data.volumes import read_volume
    from model_export.full_series import read_image, reference_nodules, score_series
    from service.pipeline import segment_image

    at = settings.model_copy(update={"proposal_score_threshold": choice.score_threshold})
    for case, entry in zip(cases, series, strict=True):
        image = read_image(case.image)
        mask = read_volume(case.mask, dtype=np.int16).array
        instances, nodules = reference_nodules(mask, image.spacing, case.meta)
        result = segment_image(image, runtime, at, mode="proposals")
        scored = score_series(case.id, "proposals", result, instances, nodules, image.spacing, 0.0)
        entry.fp_components = scored.fp_components
        entry.detected = sum(1 for row in scored.per_nodule if row["detected"])
        entry.nodules = len(nodules)
        entry.series_dice = scored.series_dice
    dices = [float(e.series_dice) for e in series if e.series_dice is not None and math.isfinite(e.series_dice)]
    n_nodules = sum(e.nodules or 0 for e in series)
    return DetectionCalibration(
        split=split,
        series=len(series),
        nodules=n_nodules,
        fp_per_scan_target=choice.fp_per_scan_target,
        fp_per_scan=sum(e.fp_components or 0 for e in series) / len(series),
        sensitivity=sum(e.detected or 0 for e in series) / n_nodules if n_nodules else 0.0,
        mean_series_dice=float(np.mean(dices)) if dices else None,
        floor=float(floor),
        precision=runtime.card.precision,
        manifest=manifest,
        extend_threshold=min(float(settings.proposal_extend_threshold), float(choice.score_threshold)),
    )


def write_operating_point(
    model_path: str | Path, point: DetectionOperatingPoint, *, variant: Optional[str] = None
) -> dict[str, list[Path]]:
    """Store ``point`` as the card's ``detection`` block: embedded card and sidecar, and matching variants.

    With ``variant`` (``int8``): only that variant's file (a point calibrated on its own scores, so
    the fp32 file and the other variants keep theirs); it must be of the fp32 file's checkpoint.

    The graph is untouched (its ``msdn.graph_sha256`` stays valid); the file's bytes change, so the
    sidecar's ``onnx_sha256`` is rewritten with them (``msdn_core.onnx_model.save_model``).

    Returns:
        ``{"written": [files], "skipped": [variant files of another checkpoint]}``.

    Raises:
        ModelFileError: unreadable model, no card, a non-fp32 file, or no detection outputs.
    """
    path = Path(model_path)
    card = card_from_model(load_onnx(path, load_weights=False), source=str(path))
    if card.precision != "fp32":
        raise ModelFileError(f"{path} is {card.precision}: calibrate the fp32 export; its variants follow it")
    if "detection" not in card.outputs:
        raise ModelFileError(f"{path} has no detection outputs: a proposal threshold means nothing for it")
    return update_cards(path, lambda c: dataclasses.replace(c, detection=point), variant=variant)


__all__ = [
    "DEFAULT_FLOOR",
    "DEFAULT_FP_PER_SCAN",
    "DEFAULT_MAX_CANDIDATES",
    "Calibration",
    "SeriesCandidates",
    "ThresholdChoice",
    "calibrate",
    "choose_threshold",
    "write_operating_point",
]
