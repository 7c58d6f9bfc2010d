"""Whole-series evaluation of an ONNX model: nodule detection (FROC, CPM) and segmentation, per mode.

For each series of a benchmark manifest (full-size CT, 0 or more nodules, reference mask) and each
mode, the series goes through the service pipeline (``service.pipeline.segment_image``: the code
path of ``POST /segment``, post-processing included) and is scored:

* ``slices``: whole slices; candidates are the answer's components, scored by their highest
  foreground probability.
* ``proposals``: the detector's 3D candidates segmented one by one; candidates are the answer's
  components, scored by their detection score.
* ``boxes``: the reference boxes as prompts (every slice of every nodule, the tight box of the
  nodule on that slice): the segmentation upper bound of a perfect detector; candidates are the
  components, all scored 1.

Reference nodules come from the reference mask and the manifest's generator metadata
(``meta.nodules``: ``box3d``, ``diameter_mm``, ``position``, ``centre_voxel`` [z, y, x]; a
single-nodule ``meta`` as generator version 4 writes it also works); see ``reference_nodules``. A
nodule without metadata gets the diameter of the sphere of its volume and position ``unknown``.

Scores:

* detection (``msdn_core.froc``): a candidate hits a nodule when its centre voxel lies in it, each
  nodule counted once; sensitivity at 1/8 ... 8 FP per scan and their mean (CPM), for all nodules
  and per size bin / position (other nodules then ignored); ``fp_per_scan``: components hitting no
  nodule per series at the service's operating point (``MSDN_PROPOSAL_SCORE_THRESHOLD`` when set, else
  the model card's calibrated threshold, else 0.5; ``operating_threshold`` overrides it);
* segmentation, per nodule hit by a candidate: Dice, HD95 (mm) and volume error (%) of the union of
  the predicted components that overlap it against the nodule;
* whole series: Dice of all foreground against all foreground (series with an empty reference and an
  empty answer left out), HD95, and the seconds the pipeline took.

Size bins by diameter: ``3-6`` [3, 6), ``6-10`` [6, 10), ``10-30`` [10, 30] mm; nodules under 3 mm
go to ``<3`` (counted in ``all``).
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from msdn_core.froc import FP_RATES, FROC, ScanMatch, froc, match_candidates
from msdn_core.postprocess import label_components

logger = logging.getLogger(__name__)

MODES = ("slices", "proposals", "boxes")
SIZE_BINS: tuple[tuple[str, float, float], ...] = (("3-6", 3.0, 6.0), ("6-10", 6.0, 10.0), ("10-30", 10.0, 30.01))
POSITIONS = ("isolated", "juxta-vascular", "juxta-pleural")


def size_bin(diameter_mm: float) -> str:
    """The size bin of a diameter (module docstring)."""
    for name, lo, hi in SIZE_BINS:
        if lo <= diameter_mm < hi:
            return name
    return "<3" if diameter_mm < SIZE_BINS[0][1] else SIZE_BINS[-1][0]


@dataclass
class Nodule:
    """A reference nodule: its instance label and what is known of it."""

    id: int
    diameter_mm: float
    position: str
    voxels: int

    @property
    def size_bin(self) -> str:
        return size_bin(self.diameter_mm)

    @property
    def groups(self) -> list[str]:
        """The table groups it belongs to: ``all``, its size bin, its position, ``>=6``."""
        out = ["all", f"size {self.size_bin}", f"position {self.position}"]
        if self.diameter_mm >= 6.0:
            out.append("size >=6")
        return out


def _meta_nodules(meta: dict[str, Any]) -> list[dict[str, Any]]:
    if isinstance(meta.get("nodules"), list):
        return [n for n in meta["nodules"] if isinstance(n, dict)]
    if "diameter_mm" in meta:  # generator version 4: one nodule per case
        return [meta]
    return []


def reference_nodules(
    mask: np.ndarray, spacing: Sequence[float], meta: Optional[dict[str, Any]] = None
) -> tuple[np.ndarray, list[Nodule]]:
    """Instance labels of the reference nodules and their attributes.

    With generator metadata carrying each nodule's ``box3d`` (version 5: one nodule per box, nodules
    apart), nodule k is the mask inside its box; otherwise nodules are the mask's 26-connected
    components, matched to metadata by the centre voxel (or the nearest nodule voxel to it). Mask
    voxels outside every box become further nodules of their own.

    Returns:
        ((Z, Y, X) int32 instance labels, 0 = background; the nodules, ids 1..K).
    """
    fg = mask > 0
    voxel_mm3 = float(np.prod(spacing))
    infos = _meta_nodules(meta or {})
    instances = np.zeros(mask.shape, np.int32)
    attrs: dict[int, dict[str, Any]] = {}
    boxed = [i for i in infos if isinstance(i.get("box3d"), list) and len(i["box3d"]) == 6]
    if boxed and len(boxed) == len(infos):
        for k, info in enumerate(boxed, start=1):
            x1, y1, z1, x2, y2, z2 = (int(v) for v in info["box3d"])
            window = (slice(z1, z2), slice(y1, y2), slice(x1, x2))
            inside = fg[window] & (instances[window] == 0)
            instances[window][inside] = k
            attrs[k] = info
        rest, extra = label_components(fg & (instances == 0))
        count = len(boxed)
        if extra:
            instances[rest > 0] = rest[rest > 0].astype(np.int32) + count
            count += int(extra)
    else:
        lab, count = label_components(fg)
        instances = lab.astype(np.int32)
        for info in infos:
            centre = info.get("centre_voxel")
            if centre is None or len(centre) != 3:
                continue
            idx = tuple(min(max(int(round(float(c))), 0), n - 1) for c, n in zip(centre, mask.shape, strict=True))
            k = int(instances[idx])
            if k == 0:  # centre voxel outside the mask (e.g. cut by the pleura): nearest nodule voxel
                zz, yy, xx = np.nonzero(instances)
                if not zz.size:
                    continue
                j = int(((zz - idx[0]) ** 2 + (yy - idx[1]) ** 2 + (xx - idx[2]) ** 2).argmin())
                k = int(instances[zz[j], yy[j], xx[j]])
            attrs.setdefault(k, info)
    sizes = np.bincount(instances.ravel(), minlength=count + 1)
    nodules = []
    for k in range(1, count + 1):
        if sizes[k] == 0:
            continue  # a box whose nodule left no voxel in the mask
        info = attrs.get(k, {})
        diameter = info.get("diameter_mm")
        if diameter is None:
            diameter = (6.0 * sizes[k] * voxel_mm3 / math.pi) ** (1.0 / 3.0)
        nodules.append(Nodule(k, float(diameter), str(info.get("position", "unknown")), int(sizes[k])))
    return instances, nodules


def prompt_boxes(instances: np.ndarray) -> list:
    """Reference box prompts: on every slice of every nodule, its tight box (label 1)."""
    from scipy import ndimage

    from service.boxes import SliceBox

    out = []
    for z in range(instances.shape[0]):
        plane = instances[z]
        if not plane.any():
            continue
        for window in ndimage.find_objects(plane):
            if window is None:
                continue
            ys, xs = window
            out.append(SliceBox(z, float(xs.start), float(ys.start), float(xs.stop), float(ys.stop), label=1))
    return out


def _window(mask: np.ndarray, margin: int = 2) -> tuple[slice, ...]:
    idx = np.nonzero(mask)
    return tuple(
        slice(max(int(i.min()) - margin, 0), min(int(i.max()) + 1 + margin, n))
        for i, n in zip(idx, mask.shape, strict=True)
    )


@dataclass
class SeriesResult:
    """One series in one mode."""

    case_id: str
    mode: str
    nodules: list[Nodule]
    match: ScanMatch
    per_nodule: list[dict[str, Any]]
    series_dice: Optional[float]
    series_hd95_mm: Optional[float]
    fp_components: int
    seconds: float
    cpu_seconds: Optional[float] = None
    # proposals confirmed by the segmentation: the same components ranked by their detection score
    detection_match: Optional[ScanMatch] = None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready record (the resumable cache of ``evaluate_full_series``)."""
        return {
            "case_id": self.case_id,
            "mode": self.mode,
            "nodules": [vars(n) for n in self.nodules],
            "match": _match_json(self.match),
            "per_nodule": self.per_nodule,
            "series_dice": self.series_dice,
            "series_hd95_mm": self.series_hd95_mm,
            "fp_components": self.fp_components,
            "seconds": self.seconds,
            "cpu_seconds": self.cpu_seconds,
            "detection_match": None if self.detection_match is None else _match_json(self.detection_match),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "SeriesResult":
        d = data.get("detection_match")
        return cls(
            case_id=data["case_id"],
            mode=data["mode"],
            nodules=[Nodule(**n) for n in data["nodules"]],
            match=_match_from_json(data["match"]),
            per_nodule=data["per_nodule"],
            series_dice=data["series_dice"],
            series_hd95_mm=data["series_hd95_mm"],
            fp_components=data["fp_components"],
            seconds=data["seconds"],
            cpu_seconds=data.get("cpu_seconds"),
            detection_match=None if d is None else _match_from_json(d),
        )


def _match_json(m: ScanMatch) -> dict[str, Any]:
    return {"nodules": m.nodules, "hits": {str(k): v for k, v in m.hits.items()}, "false_positives": m.false_positives}


def _match_from_json(m: dict[str, Any]) -> ScanMatch:
    return ScanMatch(
        nodules=list(m["nodules"]),
        hits={int(k): float(v) for k, v in m["hits"].items()},
        false_positives=list(m["false_positives"]),
    )


def score_series(
    case_id: str,
    mode: str,
    result: Any,
    instances: np.ndarray,
    nodules: Sequence[Nodule],
    spacing: Sequence[float],
    seconds: float,
    *,
    operating_threshold: float = 0.0,
) -> SeriesResult:
    """Score one pipeline result (``service.pipeline.SegmentationResult``) against the reference.

    All components are candidates of the FROC; the operating point keeps the components scoring at
    least ``operating_threshold`` (a component without score counts as 1): its false-positive
    components, the nodules it detects with their Dice / HD95 / volume error, and its whole-series Dice.
    """
    from msdn_core.metrics import overlap

    comps = result.components
    scores = [1.0 if c["score"] is None else float(c["score"]) for c in comps]
    centres = [(c["centre"][2], c["centre"][1], c["centre"][0]) for c in comps]
    match = match_candidates(zip(scores, centres, strict=True), instances, nodules=[n.id for n in nodules])
    detection_match = None
    if any("detection_score" in c for c in comps):  # confirmed proposals: also ranked by the detector alone
        det_scores = [float(c.get("detection_score", sc)) for c, sc in zip(comps, scores, strict=True)]
        detection_match = match_candidates(
            zip(det_scores, centres, strict=True), instances, nodules=[n.id for n in nodules]
        )
    kept = [k for k, sc in enumerate(scores) if sc >= operating_threshold]
    op_match = match_candidates([(scores[k], centres[k]) for k in kept], instances, nodules=[n.id for n in nodules])
    fp_components = len(op_match.false_positives)
    # the operating point's mask: the labels of the kept components (matched by box and size)
    comp_lab, _ = label_components(result.labels > 0)
    keys = {(tuple(comps[k]["box"]), int(comps[k]["voxels"])) for k in kept}
    keep_ids = []
    if len(kept) == len(comps):
        pred = comp_lab > 0
    else:
        from scipy import ndimage

        for lab_id, window in enumerate(ndimage.find_objects(comp_lab), start=1):
            if window is None:
                continue
            zs, ys, xs = window
            box = (xs.start, ys.start, zs.start, xs.stop, ys.stop, zs.stop)
            if (box, int(np.count_nonzero(comp_lab[window] == lab_id))) in keys:
                keep_ids.append(lab_id)
        pred = np.isin(comp_lab, keep_ids)
    ref = instances > 0
    series = overlap(pred, ref, spacing) if (pred.any() or ref.any()) else {"dice": None, "hd95_mm": None}
    op_lab = np.where(pred, comp_lab, 0)
    voxel_mm3 = float(np.prod(spacing))
    per_nodule = []
    for n in nodules:
        gt = instances == n.id
        row: dict[str, Any] = {
            "case_id": case_id,
            "nodule": n.id,
            "diameter_mm": n.diameter_mm,
            "size_bin": n.size_bin,
            "position": n.position,
            "detected": n.id in op_match.hits,
            "score": match.hits.get(n.id),
        }
        if row["detected"]:
            ids = np.unique(op_lab[gt])
            ids = ids[ids > 0]
            mine = np.isin(op_lab, ids) if ids.size else np.zeros_like(gt)
            win = _window(gt | mine)
            seg = overlap(mine[win], gt[win], spacing)
            pred_mm3 = float(mine.sum()) * voxel_mm3
            ref_mm3 = float(gt.sum()) * voxel_mm3
            row.update(
                dice=seg["dice"],
                hd95_mm=seg["hd95_mm"],
                volume_error_pct=100.0 * (pred_mm3 - ref_mm3) / ref_mm3,
            )
        per_nodule.append(row)
    return SeriesResult(
        case_id=case_id,
        mode=mode,
        nodules=list(nodules),
        match=match,
        per_nodule=per_nodule,
        series_dice=series["dice"] if ref.any() or pred.any() else None,
        series_hd95_mm=series["hd95_mm"],
        fp_components=fp_components,
        seconds=seconds,
        detection_match=detection_match,
    )


def _mean(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.mean(vals)) if vals else None


def _median(values: Sequence[Optional[float]]) -> Optional[float]:
    vals = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.median(vals)) if vals else None


GROUPS = ["all", "size 3-6", "size 6-10", "size 10-30", "size >=6"] + [f"position {p}" for p in POSITIONS]


def summarise(results: Sequence[SeriesResult]) -> dict[str, Any]:
    """Detection and segmentation summary of one mode's series results (module docstring)."""
    matches = [r.match for r in results]
    curves: dict[str, FROC] = {}
    groups: dict[str, dict[str, Any]] = {}
    extra = sorted({g for r in results for n in r.nodules for g in n.groups} - set(GROUPS))
    for g in GROUPS + extra:
        include = [{n.id for n in r.nodules if g in n.groups} for r in results]
        rows = [row for r in results for row in r.per_nodule if g in _row_groups(row)]
        if not rows and g != "all":
            continue
        curve = froc(matches, include=include)
        curves[g] = curve
        detected = [row for row in rows if row["detected"]]
        groups[g] = {
            "nodules": len(rows),
            "detected": len(detected),
            "sensitivity": len(detected) / len(rows) if rows else None,
            "froc": curve.table(),
            "dice": _mean([row.get("dice") for row in detected]),
            "dice_median": _median([row.get("dice") for row in detected]),
            "hd95_mm": _mean([row.get("hd95_mm") for row in detected]),
            "volume_error_pct": _mean([row.get("volume_error_pct") for row in detected]),
            "abs_volume_error_pct": _mean([abs(row["volume_error_pct"]) for row in detected]),
        }
    by_detection = None
    if any(r.detection_match is not None for r in results):  # a series without components has none
        by_detection = froc([r.match if r.detection_match is None else r.detection_match for r in results]).table()
    return {
        "series": len(results),
        "series_with_nodules": sum(1 for r in results if r.nodules),
        "groups": groups,
        "froc_by_detection_score": by_detection,
        "fp_per_scan": float(np.mean([r.fp_components for r in results])) if results else None,
        "series_dice": _mean([r.series_dice for r in results]),
        "series_dice_median": _median([r.series_dice for r in results]),
        "series_hd95_mm": _mean([r.series_hd95_mm for r in results]),
        "seconds_per_series": _median([r.seconds for r in results]),
        "cpu_seconds_per_series": _median([r.cpu_seconds for r in results]),
        "_curves": curves,
    }


def _row_groups(row: dict[str, Any]) -> list[str]:
    out = ["all", f"size {row['size_bin']}", f"position {row['position']}"]
    if row["diameter_mm"] >= 6.0:
        out.append("size >=6")
    return out


@dataclass
class BenchmarkCase:
    """A series of the benchmark: image, reference mask and generator metadata."""

    id: str
    image: Path
    mask: Path
    meta: dict[str, Any] = field(default_factory=dict)


def load_cases(manifest_path: str | Path, *, split: Optional[str] = "test", limit: Optional[int] = None) -> list:
    """The strong cases of ``split`` (all splits when None) of a manifest, with their ``meta``.

    Raises:
        ValueError: no case with a mask.
    """
    path = Path(manifest_path)
    data = json.loads(path.read_text())
    cases = []
    for entry in data.get("cases", []):
        if split is not None and entry.get("split") != split:
            continue
        if not entry.get("mask"):
            continue
        cases.append(
            BenchmarkCase(entry["id"], path.parent / entry["image"], path.parent / entry["mask"], entry.get("meta", {}))
        )
    if limit is not None:
        cases = cases[:limit]
    if not cases:
        raise ValueError(f"{path}: no case with a mask in split {split!r}")
    return cases


def read_image(path: Path):
    """The series as the service reads it (``msdn_core.readers.read_path``: NIfTI/NRRD file or DICOM folder)."""
    from msdn_core.readers import read_path

    vol = read_path(path)
    vol.array = np.asarray(vol.array, np.float32)
    if vol.modality is None:
        vol.modality = "CT"
    return vol


def evaluate_full_series(
    model_path: str | Path,
    cases: Sequence[BenchmarkCase],
    *,
    modes: Sequence[str] = MODES,
    settings: Any = None,
    threads: int = 0,
    cache: Optional[str | Path] = None,
    shared_pass: bool = True,
    froc_threshold: Optional[float] = 0.01,
    max_candidates: Optional[int] = 10,
    operating_threshold: Optional[float] = None,
) -> dict[str, Any]:
    """Run and score every case in every mode (module docstring).

    Args:
        model_path: the ONNX model (with detection outputs for ``proposals``).
        cases: the benchmark series.
        modes: modes to run; ``proposals`` is skipped for a model without detection outputs.
        settings: ``service.settings.Settings`` (default: the defaults, environment ignored).
        threads: ONNX Runtime intra-op threads (0: its default).
        cache: a JSON-lines file of finished (series, mode) results; results of the same model (by
            SHA-256) found there are reused, new ones appended (a stopped run resumes).
        shared_pass: with both ``slices`` and ``proposals``, take the slices answer from the
            proposals run's whole-slice pass (``segment_image(with_slices=True)``: the same model
            outputs, one run instead of two); its CPU seconds are then not measured (None).
        froc_threshold: proposals are made down to this detection score, so the FROC is traced
            below the operating point; the operating-point numbers (FP components per scan,
            detected nodules and their Dice, whole-series Dice) keep the components scoring at
            least the operating threshold. None: run at the operating threshold only. Proposals
            use two thresholds (``msdn_core.proposals``): with ``froc_threshold`` equal to the
            extension threshold (``MSDN_PROPOSAL_EXTEND_THRESHOLD``; both 0.01 by default) the
            candidates of this one run scoring >= t are exactly the service's candidates at
            operating threshold t, slice boxes included, for every t >= 0.01. So the FROC traced
            over the candidate scores is what the service gives at each operating threshold, and
            the operating-point numbers are those of a run at it; the components can differ only
            where the mask of a candidate under t touched a kept one's (they were one component).
        operating_threshold: the proposals operating point; None: the service's, i.e.
            ``settings.proposal_score_threshold`` when set, else the model card's calibrated
            ``detection.score_threshold`` (``msdn calibrate``), else 0.5
            (``service.operating_point``). The report records it and its source.
        max_candidates: 3D candidates segmented per series (``MSDN_MAX_CANDIDATES``; 10 covers a
            FROC up to 8 FP per scan on average, and bounds the crops a low threshold makes; the
            crops cost about half a whole-slice pass at 10); None keeps the setting.

    Returns:
        ``{"model": ..., "modes": {mode: summary}, "per_nodule": rows, "per_series": rows}``.
    """
    from model_export.data.volumes import read_volume
    from service.model import ModelRuntime
    from service.pipeline import segment_image
    from service.settings import Settings

    settings = settings or Settings(_env_file=None, model_path=Path(model_path))
    if max_candidates is not None:
        settings = settings.model_copy(update={"max_candidates": int(max_candidates)})
    runtime = ModelRuntime.load(
        model_path, providers=["CPUExecutionProvider"], intra_op_threads=threads, batch_size=settings.batch_size
    )
    runtime.warmup()
    if operating_threshold is not None:
        settings = settings.model_copy(update={"proposal_score_threshold": float(operating_threshold)})
    point = settings.proposal_threshold(runtime.card)
    operating = {"proposals": point.value}
    if froc_threshold is not None:  # the run goes lower, to trace the FROC below the operating point
        settings = settings.model_copy(update={"proposal_score_threshold": float(froc_threshold)})
    modes = [m for m in modes if m != "proposals" or runtime.has_detection]
    # the score slice boxes are linked at in the run; records from before the two thresholds were
    # made with it equal to the run's threshold (so they hold only where that is still the case)
    run = settings.proposal_settings(runtime.card)
    extend = run.selection_threshold
    single = run.selection_threshold == run.score_threshold
    done: dict[tuple[str, str], SeriesResult] = {}
    if cache is not None:
        cache = Path(cache)
        if cache.is_file():
            for line in cache.read_text().splitlines():
                rec = json.loads(line)
                # records from before the threshold was recorded were made at the fixed 0.5
                if rec.get("mode") != "proposals":
                    same_run = True
                else:
                    same_run = rec["extend_threshold"] == extend if "extend_threshold" in rec else single
                if (
                    rec.get("model_sha256") == runtime.sha256
                    and rec.get("operating_threshold", 0.5) == point.value
                    and same_run
                ):
                    r = SeriesResult.from_json(rec)
                    done[(r.case_id, r.mode)] = r
            logger.info("%s: %d series results of this model already there", cache, len(done))
        cache.parent.mkdir(parents=True, exist_ok=True)
    per_mode: dict[str, list[SeriesResult]] = {m: [] for m in modes}
    share = shared_pass and "slices" in modes and "proposals" in modes
    for i, case in enumerate(cases):
        if all((case.id, m) in done for m in modes):
            for m in modes:
                per_mode[m].append(done[(case.id, m)])
            continue
        image = read_image(case.image)
        mask = read_volume(case.mask, dtype=np.int16).array
        instances, nodules = reference_nodules(mask, image.spacing, case.meta)
        shared: Optional[tuple[Any, float, float]] = None  # proposals run with its slices answer
        for mode in modes:
            if (case.id, mode) in done:
                per_mode[mode].append(done[(case.id, mode)])
                continue
            boxes = prompt_boxes(instances) if mode == "boxes" else None
            cpu: Optional[float]
            if mode == "boxes" and not boxes:
                # nothing to prompt: an empty answer, as a user with no box would get
                result = _empty_result(image, runtime)
                seconds = cpu = 0.0
            elif share and mode in ("slices", "proposals"):
                if shared is None:
                    t0, c0 = time.perf_counter(), time.process_time()
                    run = segment_image(image, runtime, settings, mode="proposals", with_slices=True)
                    shared = (run, time.perf_counter() - t0, time.process_time() - c0)
                if mode == "proposals":
                    result, seconds, cpu = shared
                else:
                    result, seconds, cpu = shared[0].slices, shared[0].slices.timings["total_s"], None
            else:
                t0, c0 = time.perf_counter(), time.process_time()
                result = segment_image(image, runtime, settings, mode=mode, boxes=boxes)
                seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
            scored = score_series(
                case.id,
                mode,
                result,
                instances,
                nodules,
                image.spacing,
                seconds,
                operating_threshold=operating.get(mode, 0.0),
            )
            scored.cpu_seconds = cpu
            per_mode[mode].append(scored)
            if cache is not None:
                with open(cache, "a") as fh:
                    record = dict(
                        scored.to_json(),
                        model_sha256=runtime.sha256,
                        operating_threshold=point.value,
                        extend_threshold=extend,
                    )
                    fh.write(json.dumps(record) + "\n")
        logger.info(
            "%d/%d %s: %d nodules; %s",
            i + 1,
            len(cases),
            case.id,
            len(nodules),
            ", ".join(_progress(m, per_mode[m][-1]) for m in modes),
        )
    summaries = {m: summarise(per_mode[m]) for m in modes}
    return {
        "model": {
            "path": str(model_path),
            "name": runtime.card.name,
            "version": runtime.card.version,
            "sha256": runtime.sha256,
            "precision": runtime.card.precision,
            "detection": runtime.has_detection,
        },
        "settings": {
            k: getattr(settings, k)
            for k in (
                "proposal_score_threshold",
                "proposal_extend_threshold",
                "proposal_nms_iou",
                "max_proposals_per_slice",
                "proposal_link_iou",
                "proposal_max_gap",
                "proposal_min_slices",
                "proposal_nms_iou_3d",
                "max_candidates",
                "proposal_box_margin",
                "proposal_z_margin",
                "min_component_mm3",
                "keep_candidate_components",
                "batch_size",
            )
        },
        "threads": threads,
        "operating_threshold": operating,
        "operating_threshold_source": point.source,
        "froc_threshold": froc_threshold,
        "modes": summaries,
        "per_nodule": [dict(row, mode=m) for m in modes for r in per_mode[m] for row in r.per_nodule],
        "per_series": [
            {
                "mode": m,
                "case_id": r.case_id,
                "nodules": len(r.nodules),
                "series_dice": r.series_dice,
                "series_hd95_mm": r.series_hd95_mm,
                "fp_components": r.fp_components,
                "seconds": r.seconds,
                "cpu_seconds": r.cpu_seconds,
            }
            for m in modes
            for r in per_mode[m]
        ],
    }


def _progress(mode: str, r: SeriesResult) -> str:
    dice = float("nan") if r.series_dice is None else r.series_dice
    return f"{mode} dice {dice:.3f} fp {r.fp_components} {r.seconds:.1f}s"


def _empty_result(image, runtime):
    from service.model import RunStats
    from service.result import SegmentationResult

    return SegmentationResult(
        image=image,
        labels=np.zeros(image.shape, np.uint8),
        mode="boxes",
        boxes=[],
        components=[],
        metrics=None,
        run=RunStats(),
        timings={"read_s": 0.0, "total_s": 0.0},
        card=runtime.card,
        model_sha256=runtime.sha256,
        provider=runtime.provider,
    )


# --- tables ---------------------------------------------------------------------------------------


def _fmt(value: Optional[float], digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_tables(report: dict[str, Any]) -> str:
    """The report as Markdown tables: detection, segmentation by group, whole series."""
    modes = report["modes"]
    rates = [f"{r:g}" for r in FP_RATES]
    lines = ["### Detection (all nodules)", ""]
    op = report.get("operating_threshold", {}).get("proposals")
    if op is not None and "proposals" in modes:
        source = report.get("operating_threshold_source", "?")
        lines = [f"Proposals operating point: detector score >= {op:.4g} ({source}).", ""] + lines
    lines.append("| mode | " + " | ".join(f"sens@{r}" for r in rates) + " | CPM | sens@1 (>=6 mm) | FP comps/scan |")
    lines.append("|---" * (len(rates) + 4) + "|")
    for m, s in modes.items():
        t = s["groups"]["all"]["froc"]
        big = s["groups"].get("size >=6", {}).get("froc", {})
        lines.append(
            f"| {m} | "
            + " | ".join(_fmt(t[r]) for r in rates)
            + f" | {_fmt(t['cpm'])} | {_fmt(big.get('1'))} | {_fmt(s['fp_per_scan'], 2)} |"
        )
    for m, s in modes.items():
        t = s.get("froc_by_detection_score")
        if t:
            lines.append(
                f"| {m}, ranked by detection score only | "
                + " | ".join(_fmt(t[r]) for r in rates)
                + f" | {_fmt(t['cpm'])} | | |"
            )
    lines += ["", "### By nodule size and position", ""]
    lines.append(
        "| mode | group | nodules | detected | CPM | Dice (detected) | median Dice | HD95 mm | volume error % "
        "| abs volume error % |"
    )
    lines.append("|---" * 10 + "|")
    for m, s in modes.items():
        for g, v in s["groups"].items():
            lines.append(
                f"| {m} | {g} | {v['nodules']} | {v['detected']} | {_fmt(v['froc']['cpm'])} | {_fmt(v['dice'])} | "
                f"{_fmt(v['dice_median'])} | {_fmt(v['hd95_mm'], 2)} | {_fmt(v['volume_error_pct'], 1)} | "
                f"{_fmt(v['abs_volume_error_pct'], 1)} |"
            )
    lines += ["", "### Whole series", ""]
    lines.append(
        "| mode | series | whole-series Dice (mean) | median | HD95 mm | FP comps/scan | s/series (median) "
        "| CPU s/series (median) |"
    )
    lines.append("|---" * 8 + "|")
    for m, s in modes.items():
        lines.append(
            f"| {m} | {s['series']} | {_fmt(s['series_dice'])} | {_fmt(s['series_dice_median'])} | "
            f"{_fmt(s['series_hd95_mm'], 2)} | {_fmt(s['fp_per_scan'], 2)} | {_fmt(s['seconds_per_series'], 2)} | "
            f"{_fmt(s['cpu_seconds_per_series'], 2)} |"
        )
    return "\n".join(lines) + "\n"


def csv_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Long-format rows ``mode, group, metric, value`` of the summary."""
    rows = []
    for m, s in report["modes"].items():
        for key in (
            "fp_per_scan",
            "series_dice",
            "series_dice_median",
            "series_hd95_mm",
            "seconds_per_series",
            "cpu_seconds_per_series",
        ):
            rows.append({"mode": m, "group": "series", "metric": key, "value": s[key]})
        for g, v in s["groups"].items():
            for key in (
                "nodules",
                "detected",
                "sensitivity",
                "dice",
                "dice_median",
                "hd95_mm",
                "volume_error_pct",
                "abs_volume_error_pct",
            ):
                rows.append({"mode": m, "group": g, "metric": key, "value": v[key]})
            for r, sens in v["froc"].items():
                rows.append({"mode": m, "group": g, "metric": f"sens@{r}" if r != "cpm" else "cpm", "value": sens})
    return rows


def plot_froc(report: dict[str, Any], path: str | Path, *, title: str = "") -> Path:
    """FROC curves (all nodules, one per mode) as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for m, s in report["modes"].items():
        curve: FROC = s["_curves"]["all"]
        fp = np.append(np.maximum(curve.fp_per_scan, 1e-3), 16.0)  # held to the right edge
        sens = np.append(curve.sensitivity, curve.sensitivity[-1])
        ax.step(fp, sens, where="post", label=f"{m} (CPM {curve.cpm():.3f})")
    ax.set_xscale("log")
    ax.set_xlim(0.1, 16)
    ax.set_ylim(0, 1.02)
    ax.set_xticks(FP_RATES)
    ax.set_xticklabels([f"{r:g}" for r in FP_RATES])
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left")
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_outputs(report: dict[str, Any], out_dir: str | Path, *, title: str = "") -> str:
    """``report.json``, ``table.md``, ``results.csv``, ``per_nodule.csv`` and ``froc.png`` in ``out_dir``.

    Returns:
        The Markdown tables.
    """
    import csv

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = markdown_tables(report)
    (out / "table.md").write_text(table)
    (out / "report.json").write_text(json.dumps(strip_private(report), indent=1) + "\n")
    for name, rows in (("results.csv", csv_rows(report)), ("per_nodule.csv", report["per_nodule"])):
        if not rows:
            continue
        with open(out / name, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
            writer.writeheader()
            writer.writerows(strip_private({"rows": rows})["rows"])
    plot_froc(report, out / "froc.png", title=title or f"{report['model']['name']} {report['model']['version']}")
    return table


def strip_private(report: dict[str, Any]) -> dict[str, Any]:
    """The report without the FROC curve objects (JSON-ready), NaN/inf as None."""

    def clean(obj):
        if isinstance(obj, float):
            return obj if math.isfinite(obj) else None
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items() if not str(k).startswith("_")}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        return obj

    return clean(report)


__all__ = [
    "MODES",
    "BenchmarkCase",
    "Nodule",
    "csv_rows",
    "evaluate_full_series",
    "load_cases",
    "markdown_tables",
    "plot_froc",
    "prompt_boxes",
    "reference_nodules",
    "score_series",
    "size_bin",
    "strip_private",
    "summarise",
    "write_outputs",
]
