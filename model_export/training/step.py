"""One optimisation step on a mixed strong/weak batch (paper section 2.2)."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model_export.box_constraints import BoxConstraintLoss
from model_export.nets import SegmentationModel


def to_float32(out: Any) -> Any:
    """Cast the floating tensors of a (nested) forward output to float32 (losses run outside autocast)."""
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, dict):
        return {k: to_float32(v) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(to_float32(v) for v in out)
    return out


def autocast(device: torch.device, enabled: bool):
    """float16 autocast on cuda when ``enabled``; a no-op context otherwise."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@dataclass(frozen=True)
class LossOptions:
    """How a batch's losses are assembled (``TrainConfig`` fields of the same meaning).

    Args:
        det_weight: weight of the detection loss in the total.
        det_on_strong: strong rows also get the detection loss (False = paper 2.2: weak rows only).
        dice_foreground_only: foreground-only, batch-pooled Dice (``losses.soft_dice_loss``).
        seg_ce_weight: weight of the pixel-wise cross-entropy added to the Dice (0: Dice only).
        box_constraints: a segmentation-only model also learns from the weak rows through this
            constraint loss (``model_export.box_constraints``); None: weak rows are ignored.
    """

    det_weight: float = 1.0
    det_on_strong: bool = True
    dice_foreground_only: bool = False
    seg_ce_weight: float = 0.0
    box_constraints: BoxConstraintLoss | None = None


def batch_loss(
    model: nn.Module,
    module: SegmentationModel,
    batch: dict,
    device: torch.device,
    *,
    amp: bool = False,
    distributed: bool = False,
    options: LossOptions | None = None,
    epoch: int = 0,
) -> dict[str, torch.Tensor] | None:
    """Forward and loss of one collated batch.

    A model with a Detection Unit sees every row: strong rows go through both nets and give the
    segmentation (Dice) loss, and the detection loss too unless ``options.det_on_strong`` is False
    (the paper's rule); weak rows only go through the detection net and give the detection loss.
    A segmentation-only model (U-Net, U-Net+sSE, MSDN-) sees only the strong rows, unless
    ``options.box_constraints`` is set: then every row goes through it, strong rows give the
    segmentation loss and weak rows the box constraint loss (``box`` and its parts;
    ``total = seg_dice (+ seg_ce_weight * seg_ce) + box``).

    Args:
        model: the module called for the forward pass (``module`` or its DDP wrapper).
        module: the bare model (for ``loss`` and ``has_detection``).
        batch: ``collate_patches`` output.
        device: where to run.
        amp: float16 autocast on cuda.
        distributed: under DDP every process must run a backward pass, so a segmentation-only model
            given no strong row returns a zero loss through its graph instead of None.
        options: loss assembly (``LossOptions``; defaults when None).
        epoch: the training epoch (the box constraints' barrier parameter grows with it).

    Returns:
        The loss dict (parts + ``total``), or None when the batch holds nothing to learn from
        (no strong row for a segmentation-only model, outside DDP).
    """
    opts = options or LossOptions()
    common = {"dice_foreground_only": opts.dice_foreground_only, "seg_ce_weight": opts.seg_ce_weight}
    x = batch["image"].to(device, non_blocking=True)
    strong = batch["strong"].to(device)
    labels = batch["label"].to(device, non_blocking=True)[strong]
    if module.has_detection:
        targets = [{k: v.to(device) for k, v in t.items()} for t in batch["targets"]]
        with autocast(device, amp):
            out = model(x, seg_mask=strong)
        det_rows = None if opts.det_on_strong else [not bool(v) for v in batch["strong"]]
        return module.loss(
            to_float32(out), labels=labels, targets=targets, det_rows=det_rows, det_weight=opts.det_weight, **common
        )
    if opts.box_constraints is not None:
        return _constrained_loss(model, module, batch, x, strong, labels, device, amp, opts, epoch, common)
    if not bool(strong.any()):
        if not distributed:
            return None
        with autocast(device, amp):
            out = model(x)
        zero = to_float32(out["segmentation"]).sum() * 0.0
        return {"seg_dice": zero, "total": zero}
    with autocast(device, amp):
        out = model(x[strong])
    return module.loss(to_float32(out), labels=labels, **common)


def _constrained_loss(
    model: nn.Module,
    module: SegmentationModel,
    batch: dict,
    x: torch.Tensor,
    strong: torch.Tensor,
    labels: torch.Tensor,
    device: torch.device,
    amp: bool,
    opts: LossOptions,
    epoch: int,
    common: dict,
) -> dict[str, torch.Tensor]:
    """The strong rows' segmentation loss (Dice, + CE with ``seg_ce_weight``) plus the box constraint loss
    on the weak rows, one forward over all rows."""
    assert opts.box_constraints is not None
    with autocast(device, amp):
        out = model(x)
    probs = to_float32(out)["segmentation"]
    parts: dict[str, torch.Tensor] = {}
    total = probs.sum() * 0.0
    if bool(strong.any()):
        seg = module.loss({"segmentation": probs[strong]}, labels=labels, **common)
        total = total + seg.pop("total")
        parts.update(seg)
    weak = ~strong
    if bool(weak.any()):
        rows = [i for i, w in enumerate(weak.tolist()) if w]
        targets = [{k: v.to(device) for k, v in batch["targets"][i].items()} for i in rows]
        box = opts.box_constraints(probs[weak], targets, epoch=epoch)
        parts.update(box)
        total = total + box["box"]
    parts["total"] = total
    return parts
