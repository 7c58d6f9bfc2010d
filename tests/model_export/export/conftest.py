"""Fixtures: tiny models of every kind saved as checkpoints and exported once per session."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from model_export.checkpoint import save_checkpoint
from model_export.export.calibration import PatchSet
from model_export.nets import build_model

#: Tiny architecture for tests: the small preset at base width 8, one 16-wide conv per detection tower.
TINY = {"preset": "small", "base_channels": 8, "head_channels": 16, "head_convs": 1}
NORMALIZATION = {"mean": -400.0, "std": 350.0, "clip": [-1000.0, 600.0]}
PATCH = (64, 64)


def make_checkpoint(directory: Path, name: str, *, seed: int = 0, num_classes: int = 1, **overrides) -> Path:
    """A randomly initialised model of kind ``name`` saved as a checkpoint."""
    torch.manual_seed(seed)
    model = build_model(name, num_classes=num_classes, **{**TINY, **overrides})
    classes = ["nodule", "vessel", "other"][:num_classes]
    return save_checkpoint(
        directory / f"{name}.pt",
        model,
        classes=classes,
        normalization=NORMALIZATION,
        patch_size=PATCH,
        training={"data": "random init (tests)"},
        validation_dice=0.5,
    )


def discs(n: int, *, size: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Normalised noisy images of 1-2 bright discs and their masks: (n, 1, size, size), (n, size, size)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = np.zeros((n, 1, size, size), np.float32)
    labels = np.zeros((n, size, size), np.int64)
    for i in range(n):
        for _ in range(rng.integers(1, 3)):
            cy, cx, r = rng.uniform(size / 5, size * 4 / 5, 2).tolist() + [rng.uniform(size / 16, size / 6)]
            labels[i][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
        images[i, 0] = labels[i] * 2.0 - 1.0 + rng.normal(0, 0.5, (size, size))
    return images, labels


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One random-init checkpoint per model kind."""
    from model_export.nets import MODEL_NAMES

    directory = tmp_path_factory.mktemp("checkpoints")
    return {name: make_checkpoint(directory, name) for name in MODEL_NAMES}


@pytest.fixture(scope="session")
def exported(tmp_path_factory, checkpoints):
    """``exported(name, detection=False)`` -> (ExportResult, model), exported once per session."""
    from model_export.export import export_checkpoint

    directory = tmp_path_factory.mktemp("exported")
    cache: dict = {}

    def get(name: str, detection: bool = False):
        key = (name, detection)
        if key not in cache:
            out = directory / f"{name}{'_det' if detection else ''}" / "model.onnx"
            cache[key] = export_checkpoint(checkpoints[name], out, with_detection=detection)
        return cache[key]

    return get


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A tiny U-Net trained for 30 steps on 48x48 discs (Dice ~0.95), its checkpoint, fp32 export and data.

    Returns a dict with ``checkpoint``, ``onnx``, ``model``, ``calibration`` and ``validation`` PatchSets.
    """
    from model_export.export import export_checkpoint

    torch.manual_seed(0)
    model = build_model("unet", **TINY, dropout=0.0)
    images, labels = discs(64, size=48, seed=0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    rng = np.random.default_rng(0)
    for _ in range(30):
        idx = rng.choice(len(images), 8, replace=False)
        out = model(torch.from_numpy(images[idx]))
        loss = model.loss(out, labels=torch.from_numpy(labels[idx]))["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    directory = tmp_path_factory.mktemp("trained")
    ckpt = save_checkpoint(
        directory / "unet.pt",
        model,
        classes=["disc"],
        patch_size=(48, 48),
        validation_dice=0.95,
        training={"data": "synthetic discs"},
    )
    result, loaded = export_checkpoint(ckpt, directory / "model.onnx")
    val_images, val_labels = discs(24, size=48, seed=99)
    return {
        "checkpoint": ckpt,
        "onnx": result.path,
        "model": loaded,
        "calibration": PatchSet(images[:32], labels[:32], "training discs"),
        "validation": PatchSet(val_images, val_labels, "validation discs"),
    }
