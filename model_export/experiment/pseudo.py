"""Pseudo-masks from boxes: the box-supervised alternatives a user would try with the same weak cases.

- ``box``: every weak box filled with its label (the crudest mask a box gives).
- ``refined``: a model trained on the strong masks plus the filled boxes segments a window centred on
  each box; its prediction inside the box becomes the pseudo-mask (one refinement round, in the spirit
  of box-driven self-training such as BoxSup, Dai et al. 2015). A box in which the model predicts no
  pixel of the box's class keeps the filled box (counted in ``RefineStats.fallback_boxes``).

Pseudo-masked weak cases become strong cases (``Case.mask`` set to a NIfTI written next to the run, on
the image's own affine), so any segmentation-only model trains on them unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from model_export.data.manifest import Case, SliceBox
from model_export.data.volumes import read_volume, write_nifti
from msdn_core.card import Normalization
from msdn_core.crop import Window, window_origin
from msdn_core.geometry import lps_to_ras

PSEUDO_KINDS = ("box", "refined")


def box_slices(box: Sequence[float], height: int, width: int) -> tuple[slice, slice]:
    """Pixel rows and columns covered by a continuous ``[x1, y1, x2, y2]`` box (x2/y2 exclusive), clipped."""
    x1, y1, x2, y2 = box
    ys = slice(max(int(math.floor(y1)), 0), min(int(math.ceil(y2)), height))
    xs = slice(max(int(math.floor(x1)), 0), min(int(math.ceil(x2)), width))
    return ys, xs


def box_mask(shape: Sequence[int], boxes: Sequence[SliceBox]) -> np.ndarray:
    """(Z, Y, X) uint8 label volume with every box filled with its label (later boxes win on overlap)."""
    out = np.zeros(tuple(shape), dtype=np.uint8)
    z_size, h, w = out.shape
    for b in boxes:
        if 0 <= b.z < z_size:
            ys, xs = box_slices(b.box, h, w)
            out[b.z, ys, xs] = b.label or 1
    return out


@dataclass
class RefineStats:
    """How a refinement went: boxes seen, boxes that kept the filled box, mean share of the box predicted."""

    boxes: int = 0
    fallback_boxes: int = 0
    fill_sum: float = 0.0

    @property
    def mean_fill(self) -> float:
        """Mean fraction of each box's pixels in the refined mask."""
        return self.fill_sum / self.boxes if self.boxes else math.nan


@torch.no_grad()
def refine_mask(
    model,
    image: np.ndarray,
    boxes: Sequence[SliceBox],
    normalization: Normalization,
    *,
    patch_size: int,
    device: str | torch.device = "cpu",
    stats: RefineStats | None = None,
) -> np.ndarray:
    """Box-prompted pseudo-mask of one (Z, Y, X) image: the model's prediction inside each box.

    Each box is segmented in a ``patch_size`` window centred on it (as the training patches are); pixels
    of the box predicted as the box's label are kept. An empty prediction keeps the filled box.
    """
    stats = stats if stats is not None else RefineStats()
    model.eval()
    z_size, h, w = image.shape
    out = np.zeros(image.shape, dtype=np.uint8)
    fill = float(image.min())
    for b in boxes:
        if not 0 <= b.z < z_size:
            continue
        x1, y1, x2, y2 = b.box
        y0 = window_origin(y1, y2, size=h, window=patch_size)
        x0 = window_origin(x1, x2, size=w, window=patch_size)
        window = Window(y0, x0, patch_size, patch_size).extract(image[b.z], fill)
        x = torch.from_numpy(normalization.apply(window)[None, None]).to(device)
        pred = model.segment(x).argmax(dim=1)[0].cpu().numpy()
        full = np.zeros((h, w), dtype=bool)  # the prediction put back on the slice grid
        ys_img, xs_img = slice(max(y0, 0), min(y0 + patch_size, h)), slice(max(x0, 0), min(x0 + patch_size, w))
        full[ys_img, xs_img] = (pred == (b.label or 1))[
            ys_img.start - y0 : ys_img.stop - y0, xs_img.start - x0 : xs_img.stop - x0
        ]
        ys, xs = box_slices(b.box, h, w)
        inside = np.zeros((h, w), dtype=bool)
        inside[ys, xs] = True
        keep = full & inside
        stats.boxes += 1
        if not keep.any():
            stats.fallback_boxes += 1
            keep = inside
        stats.fill_sum += float(keep.sum()) / max(int(inside.sum()), 1)
        out[b.z][keep] = b.label or 1
    return out


def pseudo_cases(
    cases: Sequence[Case],
    out_dir: str | Path,
    *,
    kind: str,
    model=None,
    normalization: Normalization | None = None,
    patch_size: int = 128,
    device: str | torch.device = "cpu",
) -> tuple[list[Case], RefineStats]:
    """Strong cases unchanged, weak cases turned strong with a pseudo-mask written to ``out_dir``.

    Args:
        cases: training cases (weak ones need boxes).
        out_dir: folder for the pseudo-mask NIfTI files (``<case id>.nii.gz``).
        kind: ``box`` or ``refined`` (see module docstring); ``refined`` needs ``model`` and ``normalization``.
        model, normalization, patch_size, device: the refining model and its input handling.

    Raises:
        ValueError: unknown ``kind``, or ``refined`` without a model.
    """
    if kind not in PSEUDO_KINDS:
        raise ValueError(f"kind must be one of {PSEUDO_KINDS}, got {kind!r}")
    if kind == "refined" and (model is None or normalization is None):
        raise ValueError("kind 'refined' needs the refining model and its normalization")
    out_dir = Path(out_dir)
    stats = RefineStats()
    out: list[Case] = []
    for case in cases:
        if case.strong:
            out.append(case)
            continue
        image = read_volume(case.image)
        if kind == "box":
            mask = box_mask(image.shape, case.boxes)
            stats.boxes += len(case.boxes)
            stats.fill_sum += float(len(case.boxes))
        else:
            mask = refine_mask(
                model, image.array, case.boxes, normalization, patch_size=patch_size, device=device, stats=stats
            )
        path = write_nifti(out_dir / f"{case.id}.nii.gz", mask, affine=lps_to_ras(image.affine))  # NIfTI is RAS
        out.append(replace(case, mask=path, boxes=[]))
    return out, stats
