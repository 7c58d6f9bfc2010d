"""Volume-level evaluation of a trained model: Dice, IoU and 95% Hausdorff distance per case and class.

What is measured (``region``):

- ``target`` (default, the paper's setting): the region of interest is the 3D bounding box of the
  ground-truth target grown by ``margin`` pixels in-plane and ``z_margin`` slices, at least the
  training patch size in-plane (rounded up to a multiple of 16, centred on the target, padded with
  the image's lowest value when the image is smaller). The model segments every slice of that
  region; the metrics compare prediction and ground truth inside it. This matches training on
  target-centred patches: the model is told roughly where the target is, as in the paper.
- ``full``: every whole slice of the volume (padded to a multiple of 16). This also counts false
  positives anywhere in the body; models trained only on target-centred patches do poorly here,
  which is what ``--away-fraction`` in training is for.

Metrics (MONAI, on 3D one-hot volumes, background excluded): Dice ``2|P&G| / (|P|+|G|)``, IoU
``|P&G| / |P|+|G|-|P&G|``, HD95 the 95th percentile of the symmetric surface distances in mm
(voxel spacing taken from the image). A class absent from both prediction and truth gives NaN Dice
and IoU (left out of means); an empty prediction of a present class gives Dice 0 and HD95 ``inf``
(reported, left out of the HD95 mean and counted in ``hd95_missing``).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from model_export.data.manifest import Case
from model_export.data.sampling import Normalization
from model_export.data.volumes import read_volume
from model_export.nets import SIZE_MULTIPLE, SegmentationModel

logger = logging.getLogger(__name__)

REGIONS = ("target", "full")


def _round_up(n: int, m: int = SIZE_MULTIPLE) -> int:
    return int(math.ceil(n / m) * m)


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
    out = [slice(z0, z1)]
    for axis in (1, 2):
        lo, hi = int(nz[axis].min()) - margin, int(nz[axis].max()) + 1 + margin
        size = _round_up(max(hi - lo, patch_size))
        start = (lo + hi) // 2 - size // 2
        out.append(slice(start, start + size))
    return tuple(out)  # type: ignore[return-value]


def crop_region(volume: np.ndarray, region: tuple[slice, slice, slice], fill: float) -> np.ndarray:
    """``volume[region]`` where parts outside the volume are ``fill``."""
    zs, ys, xs = region
    out = np.full((zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start), fill, dtype=volume.dtype)
    _, h, w = volume.shape
    y0, y1 = max(ys.start, 0), min(ys.stop, h)
    x0, x1 = max(xs.start, 0), min(xs.stop, w)
    if y1 > y0 and x1 > x0:
        out[:, y0 - ys.start : y1 - ys.start, x0 - xs.start : x1 - xs.start] = volume[zs, y0:y1, x0:x1]
    return out


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
    ph, pw = _round_up(h), _round_up(w)
    x = normalization.apply(image)
    fill = float(normalization.apply(np.array([image.min()]))[0])
    if (ph, pw) != (h, w):
        x = np.pad(x, ((0, 0), (0, ph - h), (0, pw - w)), constant_values=fill)
    out = np.zeros((z, h, w), dtype=np.uint8)
    for s in range(0, z, batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(x[s : s + batch_size]))[:, None].to(device)
        probs = model.segment(batch)
        out[s : s + batch_size] = probs.argmax(dim=1)[:, :h, :w].cpu().numpy().astype(np.uint8)
    return out


def segmentation_metrics(
    pred: np.ndarray, truth: np.ndarray, num_classes: int, spacing: Sequence[float]
) -> dict[str, list[float]]:
    """Dice, IoU and HD95 (mm) per class 1..C between two (Z, Y, X) label volumes (MONAI metrics)."""
    from monai.metrics import compute_dice, compute_hausdorff_distance, compute_iou

    def onehot(a: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(a.astype(np.int64))
        return torch.nn.functional.one_hot(t, num_classes + 1).permute(3, 0, 1, 2)[None].float()

    p, g = onehot(pred), onehot(truth)
    dice = compute_dice(p, g, include_background=False, ignore_empty=True)[0]
    iou = compute_iou(p, g, include_background=False, ignore_empty=True)[0]
    hd = []
    for c in range(1, num_classes + 1):
        has_p, has_g = bool(p[0, c].any()), bool(g[0, c].any())
        if not has_g and not has_p:
            hd.append(math.nan)
        elif has_p != has_g:
            hd.append(math.inf)
        else:
            with warnings.catch_warnings():  # MONAI deprecation noise from its own internals
                warnings.simplefilter("ignore", FutureWarning)
                value = compute_hausdorff_distance(
                    p[:, [0, c]], g[:, [0, c]], include_background=False, percentile=95, spacing=list(spacing)
                )
            hd.append(float(value[0, 0]))
    return {"dice": [float(v) for v in dice], "iou": [float(v) for v in iou], "hd95": hd}


@dataclass
class EvaluationResult:
    """Per-case metrics and their means (per class and over classes)."""

    classes: list[str]
    region: str
    cases: list[dict[str, Any]] = field(default_factory=list)

    def mean(self, metric: str) -> list[float]:
        """Mean of ``metric`` per class over cases (NaN and inf values left out)."""
        out = []
        for c in range(len(self.classes)):
            vals = [r[metric][c] for r in self.cases if math.isfinite(r[metric][c])]
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
                n: sum(1 for r in self.cases if r["hd95"][c] == math.inf) for c, n in enumerate(self.classes)
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
) -> EvaluationResult:
    """Segment each strong case and measure it (see module docstring for ``region``).

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
        truth = read_volume(case.mask, dtype=np.int16).array
        if truth.shape != image.shape:
            raise ValueError(f"case {case.id}: mask shape {truth.shape} != image shape {image.shape}")
        img = image.array
        if region == "target":
            roi = target_region(truth, patch_size=patch_size, margin=margin, z_margin=z_margin)
            img = crop_region(img, roi, float(img.min()))
            truth = crop_region(truth, roi, 0)
        pred = predict_slices(model, img, normalization, device=device, batch_size=batch_size)
        metrics = segmentation_metrics(pred, truth, len(classes), image.spacing)
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
        Normalization.from_dict(card.input.__dict__),
        classes=[c.name for c in sorted(card.classes, key=lambda c: c.value)],
        region=region,
        patch_size=int(max(card.input.patch_size)),
        margin=margin,
        z_margin=z_margin,
        device=device,
        batch_size=batch_size,
    )


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
                f"{r['dice'][c]:18.4f}{r['iou'][c]:18.4f}{r['hd95'][c]:18.2f}" for c in range(len(result.classes))
            )
            lines.append(str(r["case_id"]).ljust(16) + cells)
    for c, name in enumerate(result.classes):
        lines.append(
            f"mean {name}: Dice {result.mean('dice')[c]:.4f}  IoU {result.mean('iou')[c]:.4f}  "
            f"HD95 {result.mean('hd95')[c]:.2f} mm  ({len(result.cases)} cases, region {result.region})"
        )
    lines.append(f"mean Dice over classes: {result.mean_dice:.4f}")
    return "\n".join(lines)
