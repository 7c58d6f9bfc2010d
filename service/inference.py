"""Run the model over a volume: whole slices, box-centred crops, or the detector's proposals.

* Whole slices: each (Y, X) slice is padded at the bottom/right to the model's size multiple, slices
  are run in batches, the label is the argmax channel, the padding is cut off again.
* Boxes: as in training, a crop of the model's patch size (grown to a size multiple when a box is
  larger) is placed by the one crop policy (``msdn_core.crop``: centred on the box, then shifted to
  lie inside the image); crops of one size are batched; the crop's labels are pasted back
  inside the box only (with a box label, only that class). Where boxes overlap, a pixel keeps the
  first foreground label it gets.
* Proposals: a whole-slice pass gives the detector's boxes of every slice, which
  ``msdn_core.proposals`` turns into 3D candidates (extension threshold and 2D NMS per slice as
  each batch arrives, linking across adjacent slices, tracks kept when their best slice reaches the
  operating threshold, 3D NMS). Each candidate's union box, grown by
  ``box_margin`` pixels in-plane and ``z_margin`` slices, is segmented slice by slice as request
  boxes are (with the candidate's class as label and its score).

Whole-slice mode also keeps the foreground probability (1 - background, quantised to 1/255) as
``InferenceOutput.score_volume``: the score of a component found without a detector. Proposals
with ``confirm`` keep it from the detector's pass (the same model run), to confirm each candidate's
component by the segmentation (``msdn_core.postprocess`` step 5).

Inputs are normalised as the model card says (clip, then (x - mean) / std); padding and the outside
of the image take the lowest value of the volume (after clipping; in box mode, of the slices read).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from msdn_core.crop import Window, round_up
from msdn_core.grid import GridTransform
from msdn_core.proposals import Candidate, ProposalSettings, link_candidates, select_detections
from service.boxes import SliceBox
from service.model import ModelRuntime, RunStats


def argmax_labels(probs: np.ndarray) -> np.ndarray:
    """(B, C+1, H, W) probabilities -> (B, H, W) uint8 argmax labels (first maximum wins, as np.argmax).

    Two channels: one comparison (label 1 where p1 > p0). More: a running maximum over the few
    channels. Both several times faster than ``np.argmax(axis=1)``, whose reduction runs across the
    channel stride.
    """
    channels = probs.shape[1]
    if channels == 2:
        return np.greater(probs[:, 1], probs[:, 0]).view(np.uint8)
    labels = np.zeros((probs.shape[0], *probs.shape[2:]), np.uint8)
    if channels < 2:
        return labels
    best = probs[:, 0].copy()
    for c in range(1, channels):
        channel = probs[:, c]
        better = np.greater(channel, best)
        np.putmask(labels, better, c)
        if c < channels - 1:
            np.maximum(best, channel, out=best)
    return labels


@dataclass
class InferenceOutput:
    """Labels of a volume and how they were obtained."""

    labels: np.ndarray  # (Z, Y, X) uint8
    mode: str
    boxes: list[SliceBox] = field(default_factory=list)
    stats: RunStats = field(default_factory=RunStats)
    candidates: list[Candidate] = field(default_factory=list)  # proposals: the 3D candidates
    candidate_boxes: list[list[float]] = field(default_factory=list)  # their segmented 3D boxes
    # slices, and proposals with ``confirm``: (Z, Y, X) uint8 whole-slice foreground probability x 255
    score_volume: Optional[np.ndarray] = None
    slices: Optional["InferenceOutput"] = None  # proposals with ``with_slices``: the whole-slice pass's result


def segment_slices(
    runtime: ModelRuntime,
    volume: np.ndarray,
    *,
    want_detections: bool = False,
    select: Optional[Callable[[np.ndarray, np.ndarray], Any]] = None,
    score_volume: Optional[np.ndarray] = None,
    check: Optional[Callable[[], None]] = None,
    load: Optional[Callable[[int, int], np.ndarray]] = None,
) -> tuple[np.ndarray, RunStats, Optional[list[Any]]]:
    """Whole-slice labels of a (Z, Y, X) volume.

    ``load(start, stop)``, for a volume decoded on demand (:meth:`msdn_core.volume.Volume.load`),
    returns the array with those slices decoded: each batch's slices are decoded when the batch is
    made, in the runtime's helper thread while the model runs the previous batch. Slices that need
    padding take the lowest value of the whole volume, so then everything is decoded first.

    Args:
        want_detections: also return the detector's outputs of each slice.
        select: applied to each slice's (scores (N, C), boxes (N, 4)) as it arrives; its result is
            kept instead of the raw outputs (which are large: N anchors per slice).
        score_volume: when given, a (Z, Y, X) uint8 array filled with round(255 x (1 - p_background)).
        load: see above.

    Returns:
        labels (Z, Y, X) uint8, run stats, and with ``want_detections`` per slice the detector's
        (scores, boxes), or what ``select`` made of them.
    """
    spec = runtime.card.input
    depth, height, width = volume.shape
    needs_padding = bool(height % spec.size_multiple or width % spec.size_multiple)
    if load is not None and needs_padding:
        volume, load = load(0, depth), None
    pad_value = spec.pad_value(volume) if needs_padding else 0.0  # unused without padding
    labels = np.zeros(volume.shape, np.uint8)
    detections: Optional[list[Any]] = [] if want_detections else None

    def make_batch(start: int, stop: int) -> np.ndarray:
        source = (load(start, stop) if load is not None else volume)[start:stop]
        if needs_padding:
            source, _ = spec.pad_to_multiple(np.asarray(source, np.float32), pad_value)
        return spec.normalise(source)[:, None]  # one float32 copy (int16 slices converted there)

    def consume(start: int, outputs: dict[str, np.ndarray]) -> None:
        probs = outputs[runtime.segmentation_output]
        labels[start : start + probs.shape[0]] = spec.unpad(argmax_labels(probs), volume.shape[1:])
        if score_volume is not None:
            # round(255 x (1 - p_background)) in one float buffer, cast to uint8 on assignment
            fg = np.subtract(1.0, spec.unpad(probs[:, 0], volume.shape[1:]), dtype=np.float32)
            fg *= 255.0
            np.rint(fg, out=fg)
            np.clip(fg, 0.0, 255.0, out=fg)
            score_volume[start : start + probs.shape[0]] = fg
        if detections is not None and runtime.detection_outputs:
            scores, boxes = (outputs[n] for n in runtime.detection_outputs)
            for slice_scores, slice_boxes in zip(scores, boxes, strict=True):
                detections.append((slice_scores, slice_boxes) if select is None else select(slice_scores, slice_boxes))

    item_pixels = round_up(height, spec.size_multiple) * round_up(width, spec.size_multiple)  # as padded
    stats = runtime.run_batched(depth, make_batch, consume, item_pixels=item_pixels, check=check)
    return labels, stats, detections


def segment_boxes(
    runtime: ModelRuntime,
    volume: np.ndarray,
    boxes: Sequence[SliceBox],
    *,
    check: Optional[Callable[[], None]] = None,
    decoded: Optional[np.ndarray] = None,
) -> tuple[np.ndarray, RunStats]:
    """Labels from box-centred crops pasted back inside each box (module docstring).

    ``decoded``: the slices that hold values when the reader decoded only those (box mode reads the
    slices its boxes touch); the padding value is their lowest value.
    """
    spec = runtime.card.input
    _, height, width = volume.shape
    pad_value = spec.pad_value(volume if decoded is None else volume[np.asarray(decoded, np.int64)])
    labels = np.zeros(volume.shape, np.uint8)
    total = RunStats()
    # Crop geometry per box, grouped by crop size so each group is batched.
    groups: dict[tuple[int, int], list[tuple[SliceBox, int, int]]] = {}
    for box in boxes:
        window = spec.crop_window(box.xyxy, (height, width))  # the one crop policy (msdn_core.crop)
        groups.setdefault((window.height, window.width), []).append((box, window.y0, window.x0))

    for (ch, cw), items in groups.items():

        def make_batch(start: int, stop: int, items=items, ch=ch, cw=cw) -> np.ndarray:
            batch = np.empty((stop - start, 1, ch, cw), np.float32)
            for b, (box, y0, x0) in enumerate(items[start:stop]):
                batch[b, 0] = Window(y0, x0, ch, cw).extract(volume[box.slice], pad_value)
            return spec.normalise(batch)

        def consume(start: int, outputs: dict[str, np.ndarray], items=items) -> None:
            crop_labels = argmax_labels(outputs[runtime.segmentation_output])
            for b, (box, y0, x0) in enumerate(items[start : start + crop_labels.shape[0]]):
                rows, cols = box.pixel_region()
                pred = crop_labels[b, rows.start - y0 : rows.stop - y0, cols.start - x0 : cols.stop - x0]
                if box.label is not None:
                    pred = np.where(pred == box.label, pred, 0).astype(np.uint8)
                target = labels[box.slice, rows, cols]
                np.copyto(target, pred, where=(target == 0) & (pred > 0))

        stats = runtime.run_batched(len(items), make_batch, consume, item_pixels=ch * cw, check=check)
        total.add(stats)
    return labels, total


def candidate_slice_boxes(
    candidates: Sequence[Candidate], shape: tuple[int, int, int], *, box_margin: float, z_margin: int
) -> tuple[list[SliceBox], list[list[float]]]:
    """The slice boxes that segment each candidate, and each candidate's grown 3D box.

    A candidate's union box grows by ``box_margin`` pixels on each side in-plane and ``z_margin``
    slices above and below, cut to the volume; it is segmented on each of its slices.
    """
    depth, height, width = shape
    out: list[SliceBox] = []
    grown: list[list[float]] = []
    for cand in candidates:
        x1, y1, z1, x2, y2, z2 = cand.box3d
        x1, y1 = max(x1 - box_margin, 0.0), max(y1 - box_margin, 0.0)
        x2, y2 = min(x2 + box_margin, float(width)), min(y2 + box_margin, float(height))
        zs, ze = max(int(z1) - z_margin, 0), min(int(z2) + z_margin, depth)
        grown.append([x1, y1, float(zs), x2, y2, float(ze)])
        out += [
            SliceBox(z, x1, y1, x2, y2, label=cand.label, score=cand.score, source="detector") for z in range(zs, ze)
        ]
    return out, grown


def segment_volume_array(
    runtime: ModelRuntime,
    volume: np.ndarray,
    *,
    mode: str = "auto",
    boxes: Sequence[SliceBox] = (),
    proposal: ProposalSettings = ProposalSettings(),
    box_margin: float = 4.0,
    z_margin: int = 1,
    with_slices: bool = False,
    confirm: bool = False,
    auto_proposals: Optional[bool] = None,
    check: Optional[Callable[[], None]] = None,
    decoded: Optional[np.ndarray] = None,
    load: Optional[Callable[[int, int], np.ndarray]] = None,
) -> InferenceOutput:
    """Segment a (Z, Y, X) volume in stored units.

    Args:
        runtime: the model.
        volume: the image.
        mode: ``auto`` (boxes if given, else proposals when ``auto_proposals``, else slices), ``boxes``,
            ``proposals`` or ``slices``.
        boxes: request boxes (mode ``boxes``/``auto``).
        proposal: how detector boxes become 3D candidates (``msdn_core.proposals``).
        box_margin, z_margin: growth of a candidate's box before it is segmented (pixels, slices).
        with_slices: proposals mode: also keep the whole-slice labels of the detector's pass as
            ``out.slices`` (the ``slices`` mode answer, from the same model run; for evaluation).
        confirm: proposals mode: keep the whole-slice foreground probability of the detector's pass as
            ``out.score_volume`` (uint8, x 255), for confirming candidates by the segmentation
            (``msdn_core.postprocess`` step 5).
        auto_proposals: whether ``auto`` without boxes runs proposals (``service.operating_point.auto_mode``;
            the pipeline decides it from the settings); None: when the model detects and its card
            carries a calibrated threshold.
        check: called between batches (deadline).
        decoded: slice indices that were read when the reader decoded only some (box mode); the
            other modes need every slice.
        load: for a volume decoded on demand, ``(start, stop) -> array`` with those slices decoded
            (whole slices are then decoded batch by batch, overlapping the model's runs).

    Raises:
        ValueError: mode ``boxes`` without boxes, ``proposals`` for a model without detection, or an
            unknown mode (the pipeline turns these into 422 answers).
    """
    if mode == "auto":
        if auto_proposals is None:
            auto_proposals = runtime.card.score_threshold is not None
        mode = "boxes" if boxes else ("proposals" if runtime.has_detection and auto_proposals else "slices")
    if load is not None and mode not in ("slices", "proposals"):
        volume, load = load(0, volume.shape[0]), None
    if mode == "boxes":
        if not boxes:
            raise ValueError("mode 'boxes' needs the 'boxes' field")
        labels, stats = segment_boxes(runtime, volume, boxes, check=check, decoded=decoded)
        return InferenceOutput(labels, "boxes", list(boxes), stats)
    if decoded is not None:
        raise ValueError(f"mode {mode!r} needs every slice, but only {len(decoded)} were decoded")
    if mode == "slices":
        scores = np.zeros(volume.shape, np.uint8)
        labels, stats, _ = segment_slices(runtime, volume, score_volume=scores, check=check, load=load)
        return InferenceOutput(labels, "slices", [], stats, score_volume=scores)
    if mode == "proposals":
        if not runtime.has_detection:
            raise ValueError("mode 'proposals' needs a model with detection outputs; this one has none")
        _, height, width = volume.shape

        def select(scores: np.ndarray, det_boxes: np.ndarray) -> list[np.ndarray]:
            return select_detections(scores, det_boxes, proposal, height=height, width=width)

        slice_scores = np.zeros(volume.shape, np.uint8) if (with_slices or confirm) else None
        slice_labels, stats, selected = segment_slices(
            runtime, volume, want_detections=True, select=select, score_volume=slice_scores, check=check, load=load
        )
        if load is not None:
            volume = load(0, volume.shape[0])  # all decoded by now; the array of the final dtype
        whole = (
            InferenceOutput(
                slice_labels, "slices", [], RunStats(stats.calls, stats.items, stats.seconds), score_volume=slice_scores
            )
            if with_slices
            else None
        )
        candidates = link_candidates(selected or [], proposal)
        found, grown = candidate_slice_boxes(candidates, volume.shape, box_margin=box_margin, z_margin=z_margin)
        out = InferenceOutput(
            np.zeros(volume.shape, np.uint8),
            "proposals",
            found,
            stats,
            candidates=candidates,
            candidate_boxes=grown,
            score_volume=slice_scores if confirm else None,
            slices=whole,
        )
        if found:
            labels, crop_stats = segment_boxes(runtime, volume, found, check=check)
            out.labels = labels
            out.stats.add(crop_stats)
        return out
    raise ValueError(f"mode must be auto, boxes, proposals or slices, got {mode!r}")


def output_to_native(
    out: InferenceOutput, transform: GridTransform, *, request_boxes: Sequence[SliceBox]
) -> InferenceOutput:
    """An answer made on the model grid (``msdn_core.grid``) brought onto the input's own grid, in place.

    Labels come back by one-hot linear resampling, then the inverse flips and permutation; in box mode
    they are then kept inside the native request boxes only (``request_boxes``, reported as the
    answer's boxes), as a box's labels are on the model grid. Detector boxes and candidate boxes are
    mapped exactly. The score volume is brought back where either label volume (the answer's, the
    whole-slice pass's) has labels: the only voxels post-processing reads.
    """
    if transform.identity:
        return out
    out.labels = transform.labels_to_native(out.labels)
    if out.mode == "boxes":
        _keep_inside(out.labels, request_boxes)
        out.boxes = list(request_boxes)
    else:
        out.boxes = transform.slice_boxes_to_native(out.boxes)
    out.candidate_boxes = [transform.box_to_native(b) for b in out.candidate_boxes]
    scores = out.score_volume if out.score_volume is not None else (out.slices.score_volume if out.slices else None)
    if out.slices is not None:
        out.slices.labels = transform.labels_to_native(out.slices.labels)
    if scores is not None:
        where = [out.labels] + ([out.slices.labels] if out.slices is not None else [])
        native = transform.scores_to_native(scores, where=where)
        if out.score_volume is not None:
            out.score_volume = native
        if out.slices is not None and out.slices.score_volume is not None:
            out.slices.score_volume = native
    return out


def _keep_inside(labels: np.ndarray, boxes: Sequence[SliceBox]) -> None:
    """Zero ``labels`` outside the pixel regions of ``boxes`` on every slice (in place)."""
    by_slice: dict[int, list[SliceBox]] = {}
    for box in boxes:
        by_slice.setdefault(box.slice, []).append(box)
    for z in np.flatnonzero(labels.reshape(labels.shape[0], -1).any(axis=1)):
        keep = np.zeros(labels.shape[1:], bool)
        for box in by_slice.get(int(z), []):
            keep[box.pixel_region()] = True
        labels[z][~keep] = 0
