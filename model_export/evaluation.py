"""Volume-level evaluation of a trained model: Dice, IoU and 95% Hausdorff distance per case and class.

What is measured (``region``):

- ``target`` (default, the paper's setting): the region of interest is the 3D bounding box of the
  ground-truth target grown by ``margin`` pixels in-plane and ``z_margin`` slices; in-plane it is the
  window the one crop policy (``msdn_core.crop``, as training and serving) gives for that box: at
  least the training patch size, grown to a multiple of 16 for larger targets, centred on the target
  then shifted to lie inside the image (padded with the image's lowest value only when the image is
  smaller). The model segments every slice of that
  region; the metrics compare prediction and ground truth inside it. This matches training on
  target-centred patches: the model is told roughly where the target is, as in the paper.
- ``full``: every whole slice of the volume (padded to a multiple of 16). This also counts false
  positives anywhere in the body; models trained only on target-centred patches do poorly here,
  which is what ``--away-fraction`` in training is for.

With a model grid (the card's ``input.spacing_mm`` / ``orientation``, ``msdn_core.grid``), image and
mask (matched by geometry) are brought onto it first and measured there, with its voxel size, as
training validates; the service and ``msdn evaluate --full-series`` measure on the input's own grid.

Metrics: ``msdn_core.metrics`` (Dice, IoU, HD95 in mm with the image's voxel spacing, background
excluded), with its convention for empty masks: a class absent from both prediction and truth gives
``None`` Dice, IoU and HD95 (left out of means); an empty prediction of a present class (or the
reverse) gives Dice 0 and HD95 ``None`` (left out of the HD95 mean and counted in ``hd95_missing``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model_export.data.manifest import Case
from model_export.data.volumes import read_volume
from model_export.nets import SIZE_MULTIPLE, SegmentationModel
from msdn_core.card import Normalization
from msdn_core.crop import Window, crop_window, pad_to_multiple
from msdn_core.geometry import map_to_grid
from msdn_core.grid import ModelGrid
from msdn_core.metrics import class_scores

logger = logging.getLogger(__name__)

REGIONS = ("target", "full")


def target_region(
    mask: np.ndarray, *, patch_size: int = 128, margin: int = 8, z_margin: int = 2
) -> tuple[slice, slice, slice]:
    """Region of interest around the target of a (Z, Y, X) label volume.

    Returns:
        (z, y, x) slices; y and x may extend beyond the volume (read them with ``crop_region``),
        their lengths are multiples of 16 and at least ``patch_size``.

    Raises:
        ValueError: the mask is empty.
    """
    nz = np.nonzero(mask)
    if not nz[0].size:
        raise ValueError("the ground-truth mask is empty: no target region")
    z0, z1 = max(int(nz[0].min()) - z_margin, 0), min(int(nz[0].max()) + 1 + z_margin, mask.shape[0])
    box = [
        int(nz[2].min()) - margin,
        int(nz[1].min()) - margin,
        int(nz[2].max()) + 1 + margin,
        int(nz[1].max()) + 1 + margin,
    ]
    window = crop_window(box, mask.shape, (patch_size, patch_size), size_multiple=SIZE_MULTIPLE)
    return slice(z0, z1), window.rows, window.cols


def crop_region(volume: np.ndarray, region: tuple[slice, slice, slice], fill: float) -> np.ndarray:
    """``volume[region]`` where parts outside the volume are ``fill``."""
    zs, ys, xs = region
    window = Window(ys.start, xs.start, ys.stop - ys.start, xs.stop - xs.start)
    return window.extract(volume[zs], fill)


@torch.no_grad()
def predict_slices(
    model: SegmentationModel,
    image: np.ndarray,
    normalization: Normalization,
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
) -> np.ndarray:
    """Label volume (Z, Y, X) uint8 of a (Z, Y, X) image, segmented slice by slice (argmax of ``segment``).

    Slices are padded (lowest value) to multiples of 16 and cropped back.
    """
    model.eval()
    z, h, w = image.shape
    fill = float(normalization.apply(np.array([image.min()]))[0])
    x, _ = pad_to_multiple(normalization.apply(image), SIZE_MULTIPLE, fill)
    out = np.zeros((z, h, w), dtype=np.uint8)
    for s in range(0, z, batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(x[s : s + batch_size]))[:, None].to(device)
        probs = model.segment(batch)
        out[s : s + batch_size] = probs.argmax(dim=1)[:, :h, :w].cpu().numpy().astype(np.uint8)
    return out


def segmentation_metrics(
    pred: np.ndarray, truth: np.ndarray, num_classes: int, spacing: Sequence[float]
) -> dict[str, list[float | None]]:
    """Dice, IoU and HD95 (mm) per class 1..C between two (Z, Y, X) label volumes (``msdn_core.metrics``)."""
    return class_scores(pred, truth, num_classes, spacing)


@dataclass
class EvaluationResult:
    """Per-case metrics and their means (per class and over classes)."""

    classes: list[str]
    region: str
    cases: list[dict[str, Any]] = field(default_factory=list)

    def mean(self, metric: str) -> list[float]:
        """Mean of ``metric`` per class over cases (``None`` values left out; NaN when none is left)."""
        out = []
        for c in range(len(self.classes)):
            vals = [r[metric][c] for r in self.cases if r[metric][c] is not None]
            out.append(float(np.mean(vals)) if vals else math.nan)
        return out

    @property
    def mean_dice(self) -> float:
        """Mean Dice over cases, then classes."""
        vals = [v for v in self.mean("dice") if math.isfinite(v)]
        return float(np.mean(vals)) if vals else math.nan

    def summary(self) -> dict[str, Any]:
        """JSON-friendly summary: means per class, overall mean Dice, missing HD95 counts and the cases."""
        return {
            "region": self.region,
            "classes": self.classes,
            "num_cases": len(self.cases),
            "mean_dice": self.mean_dice,
            "dice": dict(zip(self.classes, self.mean("dice"), strict=True)),
            "iou": dict(zip(self.classes, self.mean("iou"), strict=True)),
            "hd95_mm": dict(zip(self.classes, self.mean("hd95"), strict=True)),
            "hd95_missing": {
                n: sum(1 for r in self.cases if r["hd95"][c] is None and r["dice"][c] is not None)
                for c, n in enumerate(self.classes)
            },
            "cases": self.cases,
        }


def evaluate_cases(
    model: SegmentationModel,
    cases: Sequence[Case],
    normalization: Normalization,
    *,
    classes: Sequence[str],
    region: str = "target",
    patch_size: int = 128,
    margin: int = 8,
    z_margin: int = 2,
    device: str | torch.device = "cpu",
    batch_size: int = 8,
    grid: ModelGrid | None = None,
) -> EvaluationResult:
    """Segment each strong case and measure it (see module docstring for ``region`` and ``grid``).

    Raises:
        ValueError: unknown region, or a case without a mask.
    """
    if region not in REGIONS:
        raise ValueError(f"region must be one of {REGIONS}, got {region!r}")
    result = EvaluationResult(list(classes), region)
    model = model.to(device).eval()
    for case in cases:
        if not case.strong:
            raise ValueError(f"case {case.id} has no mask: evaluation needs ground-truth masks")
        image = read_volume(case.image)
        mask = read_volume(case.mask, dtype=np.int16)
        truth = map_to_grid(mask.array, mask.affine, image.shape, image.affine, what=f"case {case.id}: mask")
        transform = (grid or ModelGrid()).transform_for(image)
        img, truth, spacing = transform.to_model(image.array), transform.labels_to_model(truth), transform.spacing
        if region == "target":
            roi = target_region(truth, patch_size=patch_size, margin=margin, z_margin=z_margin)
            img = crop_region(img, roi, float(img.min()))
            truth = crop_region(truth, roi, 0)
        pred = predict_slices(model, img, normalization, device=device, batch_size=batch_size)
        metrics = segmentation_metrics(pred, truth, len(classes), spacing)
        result.cases.append({"case_id": case.id, **metrics})
        logger.debug("case %s: Dice %s", case.id, metrics["dice"])
    return result


def evaluate_checkpoint(
    path,
    cases: Sequence[Case],
    *,
    region: str = "target",
    margin: int = 8,
    z_margin: int = 2,
    device: str = "cpu",
    batch_size: int = 8,
) -> EvaluationResult:
    """``evaluate_cases`` with the model, classes, normalisation and patch size of a checkpoint."""
    from model_export.checkpoint import load_checkpoint

    model, card, _ = load_checkpoint(path, device=device)
    return evaluate_cases(
        model,
        cases,
        card.input.normalization,
        classes=[c.name for c in sorted(card.classes, key=lambda c: c.value)],
        region=region,
        patch_size=int(max(card.input.patch_size)),
        margin=margin,
        z_margin=z_margin,
        device=device,
        batch_size=batch_size,
        grid=card.input.model_grid(),
    )


def _cell(value: float | None, digits: int) -> str:
    return f"{'-':>18}" if value is None else f"{value:18.{digits}f}"


def format_result(result: EvaluationResult, *, per_case: bool = True) -> str:
    """A plain-text table of the result."""
    lines = []
    if per_case:
        header = "case".ljust(16) + "".join(
            f"{f'{m} {n}':>18}" for n in result.classes for m in ("dice", "iou", "hd95")
        )
        lines.append(header)
        for r in result.cases:
            cells = "".join(
                _cell(r["dice"][c], 4) + _cell(r["iou"][c], 4) + _cell(r["hd95"][c], 2)
                for c in range(len(result.classes))
            )
            lines.append(str(r["case_id"]).ljust(16) + cells)
    for c, name in enumerate(result.classes):
        lines.append(
            f"mean {name}: Dice {result.mean('dice')[c]:.4f}  IoU {result.mean('iou')[c]:.4f}  "
            f"HD95 {result.mean('hd95')[c]:.2f} mm  ({len(result.cases)} cases, region {result.region})"
        )
    lines.append(f"mean Dice over classes: {result.mean_dice:.4f}")
    return "\n".join(lines)
