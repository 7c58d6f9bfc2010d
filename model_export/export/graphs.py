"""The modules that get exported: segmentation path alone, or with decoded detections.

Detection decoding is written here with plain tensor ops (no data-dependent checks), so that the
anchors are generated in the graph from the feature shapes and the graph stays valid for any H, W
that is a multiple of 16. ``export.onnx_export.check_parity`` compares it with the model's own
``det_unit.detect`` (MONAI's box coder), an independent path.
"""

from __future__ import annotations

import torch
from torch import nn

from model_export.detection.box_coder import BBOX_XFORM_CLIP
from model_export.nets import SegmentationModel

#: Output tensor names of the detection outputs (model card ``outputs["detection"]``).
DET_SCORES_NAME = "det_scores"
DET_BOXES_NAME = "det_boxes"


def decode_boxes(
    deltas: torch.Tensor, anchors: torch.Tensor, weights: tuple[float, float, float, float]
) -> torch.Tensor:
    """RetinaNet decoding, export-friendly.

    Args:
        deltas: (B, N, 4) ``(dx, dy, dw, dh)``.
        anchors: (N, 4) ``[x1, y1, x2, y2]`` pixels.
        weights: ``(wx, wy, ww, wh)`` of the box coder.

    Returns:
        (B, N, 4) boxes ``[x1, y1, x2, y2]`` in pixels.
    """
    wx, wy, ww, wh = weights
    aw = anchors[:, 2] - anchors[:, 0]
    ah = anchors[:, 3] - anchors[:, 1]
    acx = anchors[:, 0] + 0.5 * aw
    acy = anchors[:, 1] + 0.5 * ah
    cx = deltas[..., 0] / wx * aw + acx
    cy = deltas[..., 1] / wy * ah + acy
    half_w = 0.5 * torch.exp(torch.clamp(deltas[..., 2] / ww, max=BBOX_XFORM_CLIP)) * aw
    half_h = 0.5 * torch.exp(torch.clamp(deltas[..., 3] / wh, max=BBOX_XFORM_CLIP)) * ah
    return torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], dim=-1)


class SegmentationGraph(nn.Module):
    """x (B, C_in, H, W) -> probabilities (B, C+1, H, W): the model's ``segmentation_path()``."""

    def __init__(self, model: SegmentationModel):
        super().__init__()
        self.path = model.segmentation_path()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, C+1, H, W) softmax probabilities."""
        return self.path(x)


class DetectionGraph(nn.Module):
    """x -> (probabilities, det_scores, det_boxes) for models with a Detection Unit.

    ``det_scores`` (B, N, C) are sigmoid class scores in [0, 1] and ``det_boxes`` (B, N, 4) decoded
    ``[x1, y1, x2, y2]`` pixels of all N anchors (no thresholding, no NMS: the caller picks), N =
    sum over the detection levels of H_l * W_l * A.

    Args:
        model: a model of the family with ``has_detection``.

    Raises:
        ValueError: the model has no Detection Unit.
    """

    def __init__(self, model: SegmentationModel):
        super().__init__()
        if not model.has_detection:
            raise ValueError(f"model {model.config.name!r} has no detection unit; export it without detection")
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, C_in, H, W) -> (B, C+1, H, W), (B, N, C), (B, N, 4)."""
        out = self.model(x)
        du = self.model.det_unit
        logits = torch.cat(list(out["cls_logits"]), dim=1)
        deltas = torch.cat(list(out["box_deltas"]), dim=1)
        anchors = du.anchors(out["det_sizes"], device=x.device)
        boxes = decode_boxes(deltas, anchors, du.box_coder.weights)
        return out["segmentation"], torch.sigmoid(logits), boxes


def export_graph(model: SegmentationModel, *, with_detection: bool = False) -> nn.Module:
    """The module to export for ``model`` (eval mode, parameters shared)."""
    graph = DetectionGraph(model) if with_detection else SegmentationGraph(model)
    return graph.eval()
