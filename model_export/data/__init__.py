"""Data for mixed supervision: manifests of strong (mask) and weak (boxes-only) cases, volume I/O,
the synthetic benchmark generator, and 2D patch sampling for training."""

from __future__ import annotations

import os
from typing import Any, Iterator, Optional


def load_patches(
    manifest: str | os.PathLike,
    *,
    split: str = "train",
    limit: int = 64,
    normalization: Optional[dict[str, Any]] = None,
    patch_size: int = 128,
    grid: Any = None,
) -> Iterator[tuple[Any, Any]]:
    """Deterministic target-centred ``(image (1, H, W) float32, label (H, W) int64)`` patches.

    Used to calibrate and validate quantised exports (``msdn export --int8 --manifest``). Patches are
    the centred validation-style crops of the split's strong cases (placed by the one crop policy,
    ``msdn_core.crop``), spread evenly over the data set.

    Args:
        manifest: data set manifest.
        split: ``train``, ``val`` or ``test``.
        limit: most patches returned.
        normalization: ``{"mean", "std", "clip"}`` to apply (a model card's ``input``); default the
            split's own statistics.
        patch_size: patch side (multiple of 16).
        grid: the model's grid (``msdn_core.grid.ModelGrid``, a card's ``input.model_grid()``): the
            patches are drawn on it, as the exported model sees them; None: each case's own grid.

    Raises:
        ValueError: the split has no strong case.
    """
    import numpy as np

    from model_export.data.manifest import load_manifest
    from model_export.data.sampling import PatchDataset, compute_normalization
    from msdn_core.card import Normalization

    cases = [c for c in load_manifest(manifest).split(split) if c.strong]
    if not cases:
        raise ValueError(f"{manifest}: split {split!r} has no case with a mask to draw patches from")
    norm = Normalization.from_dict(normalization) if normalization else compute_normalization(cases)
    dataset = PatchDataset(cases, normalization=norm, patch_size=patch_size, augment=False, grid=grid)
    for index in np.unique(np.linspace(0, len(dataset) - 1, min(limit, len(dataset))).astype(int)):
        item = dataset[int(index)]
        yield item["image"].numpy(), item["label"].numpy()
