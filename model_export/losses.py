"""Losses: soft Dice and cross-entropy (segmentation), sigmoid focal and smooth-L1 (detection)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss

_DICE = DiceLoss(include_background=True, to_onehot_y=True, softmax=False, smooth_nr=1e-5, smooth_dr=1e-5)
_DICE_FG = DiceLoss(
    include_background=False, to_onehot_y=True, softmax=False, smooth_nr=1e-5, smooth_dr=1e-5, batch=True
)


def soft_dice_loss(probs: torch.Tensor, labels: torch.Tensor, *, foreground_only: bool = False) -> torch.Tensor:
    """Multi-class soft Dice loss.

    Default (paper 2.2): background counted as a class,
    ``1 - mean over samples and classes of (2 |P.G| + eps) / (|P| + |G| + eps)`` with eps = 1e-5.
    ``foreground_only``: the foreground classes only, with the sums taken over the whole batch
    (``1 - mean over classes 1..C of (2 sum_b |P.G| + eps) / (sum_b |P| + |G| + eps)``), so that a row
    without target (an away or hard-negative patch) adds its false-positive mass to the denominator
    instead of scoring 1 for an empty prediction.

    Args:
        probs: (B, C+1, H, W) softmax probabilities.
        labels: (B, H, W) or (B, 1, H, W) integer labels in ``0..C``.
        foreground_only: see above.

    Returns:
        Scalar loss.
    """
    if labels.dim() == probs.dim() - 1:
        labels = labels.unsqueeze(1)
    return (_DICE_FG if foreground_only else _DICE)(probs, labels)


def cross_entropy_from_probs(probs: torch.Tensor, labels: torch.Tensor, *, eps: float = 1e-7) -> torch.Tensor:
    """Pixel-wise cross-entropy of softmax probabilities: ``mean over pixels of -log p[label]``.

    The segmentation head outputs probabilities (``SegmentationUnit``), so the log is taken here,
    with the probabilities clamped at ``eps`` (a pixel given probability 0 costs ``-log eps``).

    Args:
        probs: (B, C+1, H, W) softmax probabilities.
        labels: (B, H, W) or (B, 1, H, W) integer labels in ``0..C``.
        eps: lower clamp of the probabilities; must be in (0, 1).

    Returns:
        Scalar loss.
    """
    if not 0 < eps < 1:
        raise ValueError(f"eps must be in (0, 1), got {eps!r}")
    if labels.dim() == probs.dim():
        labels = labels.squeeze(1)
    return F.nll_loss(torch.log(probs.clamp_min(eps)), labels.long())


def sigmoid_focal_loss(
    logits: torch.Tensor, targets: torch.Tensor, *, alpha: float = 0.25, gamma: float = 2.0, reduction: str = "sum"
) -> torch.Tensor:
    """Focal loss on sigmoid outputs (Lin et al., RetinaNet).

    ``FL = -alpha_t (1 - p_t)^gamma log(p_t)`` with ``p_t = p`` where target is 1 else ``1 - p``,
    ``alpha_t = alpha`` where target is 1 else ``1 - alpha``.

    Args:
        logits: any shape.
        targets: same shape, values in {0, 1}.
        alpha: weight of positives; a negative value disables the weighting.
        gamma: focusing exponent.
        reduction: ``"sum"``, ``"mean"`` or ``"none"``.
    """
    if reduction not in ("sum", "mean", "none"):
        raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got {reduction!r}")
    p = torch.sigmoid(logits)
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = p * targets + (1 - p) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.mean()
    return loss


def box_regression_loss(deltas: torch.Tensor, targets: torch.Tensor, *, beta: float = 1.0 / 9) -> torch.Tensor:
    """Summed smooth-L1 ("regularized L1") loss between predicted and target box deltas (N, 4)."""
    return F.smooth_l1_loss(deltas, targets, beta=beta, reduction="sum")
