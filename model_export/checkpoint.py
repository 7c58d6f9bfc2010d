"""Self-describing checkpoints: ``load_checkpoint(path)`` rebuilds the model from the file alone."""

from __future__ import annotations

import datetime as _dt
import logging
import os
from pathlib import Path
from typing import Any, Optional

import torch

from model_export import __version__
from model_export.nets import SegmentationModel, build_from_config
from model_export.nets.config import SIZE_MULTIPLE, NetConfig
from msdn_core.card import ClassInfo, InputSpec, ModelCard
from msdn_core.digest import file_sha256  # noqa: F401  (re-exported: checkpoint digests)
from msdn_core.grid import ModelGrid

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "msdn-checkpoint"
CHECKPOINT_FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """The file is not a usable msdn checkpoint (the message says why)."""


def save_checkpoint(
    path: str | os.PathLike,
    model: SegmentationModel,
    *,
    classes: Optional[list[str]] = None,
    normalization: Optional[dict[str, Any]] = None,
    patch_size: tuple[int, int] = (128, 128),
    grid: Optional[ModelGrid] = None,
    training: Optional[dict[str, Any]] = None,
    validation_dice: Optional[float] = None,
    optimizer_state: Optional[dict] = None,
    extra: Optional[dict[str, Any]] = None,
) -> Path:
    """Write ``model`` with everything needed to rebuild and use it.

    Args:
        path: destination file (written atomically).
        model: a model of the family (has ``config``).
        classes: class names for label values 1..C (default ``class_1``...).
        normalization: ``{"mean", "std", "clip"}`` of the training images (see ``msdn_core.card``).
        patch_size: training patch (H, W).
        grid: the model grid the training images were brought onto (``msdn_core.grid``), or None.
        training: free-form training metadata (data set, splits, epochs, seed...).
        validation_dice: mean validation Dice of these weights.
        optimizer_state: optimizer/scheduler state for resuming.
        extra: any further JSON-friendly metadata.
    """
    config: NetConfig = model.config
    names = classes or [f"class_{i}" for i in range(1, config.num_classes + 1)]
    if len(names) != config.num_classes:
        raise ValueError(f"classes must have {config.num_classes} names, got {len(names)}")
    norm = {"mean": 0.0, "std": 1.0, "clip": None, **(normalization or {})}
    card = ModelCard(
        name=f"msdn-{config.name}",
        method=config.name,
        classes=[ClassInfo(i + 1, n) for i, n in enumerate(names)],
        input=InputSpec(
            channels=config.in_channels,
            mean=float(norm["mean"]),
            std=float(norm["std"]),
            clip=None if norm["clip"] is None else [float(v) for v in norm["clip"]],
            patch_size=[int(v) for v in patch_size],
            size_multiple=SIZE_MULTIPLE,
            spacing_mm=None if grid is None or grid.spacing_mm is None else list(grid.spacing_mm),
            orientation=None if grid is None else grid.orientation,
        ),
        version=__version__,
        architecture=config.to_dict(),
        training=dict(training or {}),
        validation_dice=validation_dice,
    )
    payload = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_FORMAT_VERSION,
        "msdn_version": __version__,
        "torch_version": str(torch.__version__),
        "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "config": config.to_dict(),
        "card": card.to_dict(),
        "state_dict": model.state_dict(),
        "optimizer_state": optimizer_state,
        "extra": dict(extra or {}),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    logger.info("saved checkpoint %s (%s, preset %s)", path, config.name, config.preset)
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load and validate the raw checkpoint dict (tensors stay on the CPU)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for damaged files
        raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not an msdn checkpoint")
    if payload.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CheckpointError(f"{path}: unsupported checkpoint format_version {payload.get('format_version')!r}")
    return payload


def load_checkpoint(
    path: str | os.PathLike, *, device: str | torch.device = "cpu"
) -> tuple[SegmentationModel, ModelCard, dict[str, Any]]:
    """Rebuild the model saved by ``save_checkpoint``, in eval mode.

    Returns:
        ``(model, card, payload)``; ``payload`` holds the raw dict (optimizer state, extra...).
    """
    payload = read_checkpoint(path)
    config = NetConfig.from_dict(payload["config"])
    model = build_from_config(config)
    model.load_state_dict(payload["state_dict"])
    model.to(device).eval()
    return model, ModelCard.from_dict(payload["card"]), payload
