"""Tiny NIfTI data sets written by the tests themselves (independent of ``msdn synth``)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from model_export.data.manifest import boxes_from_mask
from model_export.data.volumes import write_nifti


def blob_case(rng: np.random.Generator, shape=(6, 48, 48), radius=(2.5, 6.0, 7.0)) -> tuple[np.ndarray, np.ndarray]:
    """A noisy CT-like volume (HU) with one bright ellipsoid and its mask."""
    z, y, x = shape
    cz = rng.uniform(1.5, z - 2.5)
    cy = rng.uniform(radius[1] + 2, y - radius[1] - 2)
    cx = rng.uniform(radius[2] + 2, x - radius[2] - 2)
    zz, yy, xx = np.meshgrid(np.arange(z), np.arange(y), np.arange(x), indexing="ij")
    d = ((zz - cz) / radius[0]) ** 2 + ((yy - cy) / radius[1]) ** 2 + ((xx - cx) / radius[2]) ** 2
    mask = (d <= 1).astype(np.uint8)
    image = -800 + 60 * rng.standard_normal(shape) + 850.0 * mask.astype(np.float32)
    return image.astype(np.float32), mask


def write_tiny_dataset(
    root: Path,
    *,
    strong: int = 3,
    weak: int = 2,
    val: int = 2,
    test: int = 2,
    shape=(6, 48, 48),
    seed: int = 0,
    spacing=(2.0, 0.7, 0.7),
    extra_cases: list[dict] | None = None,
) -> Path:
    """Write images, masks and ``manifest.json`` under ``root``; return the manifest path.

    Weak training cases carry per-slice boxes derived from their (unsaved) masks.
    """
    rng = np.random.default_rng(seed)
    cases = []
    plan = [("train", True)] * strong + [("train", False)] * weak + [("val", True)] * val + [("test", True)] * test
    for i, (split, is_strong) in enumerate(plan):
        image, mask = blob_case(rng, shape)
        cid = f"case_{i:03d}"
        write_nifti(root / "images" / f"{cid}.nii.gz", image, spacing=spacing)
        entry: dict = {"id": cid, "split": split, "image": f"images/{cid}.nii.gz"}
        if is_strong:
            write_nifti(root / "masks" / f"{cid}.nii.gz", mask, spacing=spacing)
            entry["mask"] = f"masks/{cid}.nii.gz"
        else:
            entry["boxes"] = [{"slice": b.z, "box": list(b.box), "label": b.label} for b in boxes_from_mask(mask)]
        cases.append(entry)
    cases += extra_cases or []
    path = root / "manifest.json"
    path.write_text(json.dumps({"name": "tiny", "classes": [{"value": 1, "name": "blob"}], "cases": cases}))
    return path
