"""Patches for int8 calibration and variant validation, and the Dice used to compare variants.

The data contract is deliberately plain so that any pipeline can feed it:

* ``PatchSet(images, labels)``: ``images`` (N, C, H, W) float32 *already normalised* by the model
  card's contract (clip, then ``(x - mean) / std``), H and W multiples of 16; ``labels`` (N, H, W)
  integers in 0..C, or None.
* ``PatchSet.from_pairs(iterable)`` stacks ``(image (C, H, W), label (H, W) or None)`` pairs.
* ``load_npz(path)`` reads a ``.npz`` with arrays ``images`` and optionally ``labels``
  (what ``msdn export --calibration-npz`` takes).
* ``load_manifest_patches(manifest, ...)`` is the hook for the training data pipeline
  (``model_export.data``); it raises a clear error while that pipeline does not provide patches.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import CalibrationDataReader

from msdn_core.card import INPUT_NAME

#: Divisor of H and W the exported graphs accept.
SIZE_MULTIPLE = 16


class CalibrationDataError(ValueError):
    """Calibration / validation data is missing or malformed (the message says what is wrong)."""


@dataclass
class PatchSet:
    """Normalised image patches with optional label maps.

    Args:
        images: (N, C, H, W) float32, normalised; H, W multiples of 16.
        labels: (N, H, W) integer labels 0..C, or None.
        description: where the patches come from (reported with variant Dice).

    Raises:
        CalibrationDataError: wrong shapes, dtypes, non-finite values, or sizes not multiples of 16.
    """

    images: np.ndarray
    labels: np.ndarray | None = None
    description: str = "patches"

    def __post_init__(self) -> None:
        images = np.asarray(self.images)
        if images.ndim != 4:
            raise CalibrationDataError(f"images must be (N, C, H, W), got shape {images.shape}")
        if images.shape[0] == 0:
            raise CalibrationDataError("images is empty (N = 0)")
        if not np.issubdtype(images.dtype, np.floating):
            raise CalibrationDataError(f"images must be float (normalised), got dtype {images.dtype}")
        h, w = images.shape[-2:]
        if h % SIZE_MULTIPLE or w % SIZE_MULTIPLE:
            raise CalibrationDataError(f"image height and width must be multiples of {SIZE_MULTIPLE}, got {h}x{w}")
        images = np.ascontiguousarray(images, dtype=np.float32)
        if not np.isfinite(images).all():
            raise CalibrationDataError("images contain NaN or infinite values")
        self.images = images
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != (images.shape[0], h, w):
                raise CalibrationDataError(
                    f"labels must be (N, H, W) = {(images.shape[0], h, w)}, got shape {labels.shape}"
                )
            if not np.issubdtype(labels.dtype, np.integer) and not np.array_equal(labels, np.round(labels)):
                raise CalibrationDataError(f"labels must be integers, got dtype {labels.dtype} with fractions")
            self.labels = labels.astype(np.int64)
            if self.labels.min() < 0:
                raise CalibrationDataError(f"labels must be >= 0, got minimum {int(self.labels.min())}")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def channels(self) -> int:
        """Image channels C."""
        return int(self.images.shape[1])

    def head(self, n: int | None) -> PatchSet:
        """The first ``n`` patches (all when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n!r}")
        labels = None if self.labels is None else self.labels[:n]
        return PatchSet(self.images[:n], labels, f"{self.description} (first {n})")

    def batches(self, batch_size: int) -> Iterator[np.ndarray]:
        """Image batches of at most ``batch_size``."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        for i in range(0, len(self), batch_size):
            yield self.images[i : i + batch_size]

    @classmethod
    def from_pairs(
        cls, pairs: Iterable[tuple[np.ndarray, np.ndarray | None]], *, description: str = "patches"
    ) -> PatchSet:
        """Stack ``(image (C, H, W), label (H, W) or None)`` pairs of one size.

        Raises:
            CalibrationDataError: no pairs, mixed sizes, or labels on some pairs only.
        """
        images, labels = [], []
        for i, pair in enumerate(pairs):
            try:
                image, label = pair
            except (TypeError, ValueError) as exc:
                raise CalibrationDataError(f"pair {i} is not an (image, label) pair") from exc
            image = np.asarray(image)
            if image.ndim != 3:
                raise CalibrationDataError(f"pair {i}: image must be (C, H, W), got shape {image.shape}")
            if images and image.shape != images[0].shape:
                raise CalibrationDataError(
                    f"pair {i}: image shape {image.shape} differs from the first {images[0].shape}; "
                    "crop or pad patches to one size"
                )
            images.append(image)
            labels.append(None if label is None else np.asarray(label))
        if not images:
            raise CalibrationDataError("no calibration patches given")
        have = [lb is not None for lb in labels]
        if any(have) and not all(have):
            raise CalibrationDataError("labels are given for some patches only")
        stacked = np.stack(labels) if all(have) else None
        return cls(np.stack(images), stacked, description)


def load_npz(path: str | os.PathLike, *, description: str | None = None) -> PatchSet:
    """Read ``images`` (N, C, H, W) normalised float32 and optional ``labels`` (N, H, W) from a ``.npz``.

    Raises:
        CalibrationDataError: missing or unreadable file, no ``images`` array, malformed arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise CalibrationDataError(f"calibration file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # zipfile / numpy raise several types
        raise CalibrationDataError(f"cannot read {path} as a .npz archive: {exc}") from exc
    if "images" not in arrays:
        raise CalibrationDataError(f"{path} has no 'images' array (found {sorted(arrays)})")
    try:
        return PatchSet(arrays["images"], arrays.get("labels"), description or path.name)
    except CalibrationDataError as exc:
        raise CalibrationDataError(f"{path}: {exc}") from exc


def save_npz(path: str | os.PathLike, patches: PatchSet) -> Path:
    """Write ``patches`` in the ``load_npz`` layout."""
    path = Path(path)
    arrays = {"images": patches.images}
    if patches.labels is not None:
        arrays["labels"] = patches.labels
    np.savez_compressed(path, **arrays)
    return path


def load_manifest_patches(
    manifest: str | os.PathLike,
    *,
    split: str = "train",
    limit: int = 64,
    normalization: dict | None = None,
    patch_size: int = 128,
    grid: Any = None,
) -> PatchSet:
    """Patches from a data set manifest, through ``model_export.data.load_patches``.

    ``normalization`` (the model card's ``input``: mean, std, clip) is applied so the patches are what
    the exported model sees, on the model's grid ``grid`` (``msdn_core.grid.ModelGrid``). Raises
    ``CalibrationDataError`` when the pipeline or the data is missing.
    """
    if importlib.util.find_spec("model_export.data") is None:
        raise CalibrationDataError("--manifest needs the training data pipeline (model_export.data), not installed")
    data = importlib.import_module("model_export.data")
    loader = getattr(data, "load_patches", None)
    if loader is None:
        raise CalibrationDataError(
            "model_export.data has no load_patches(manifest, split=, limit=); use --calibration-npz"
        )
    try:
        pairs = list(
            loader(manifest, split=split, limit=limit, normalization=normalization, patch_size=patch_size, grid=grid)
        )
    except ValueError as exc:  # ManifestError is a ValueError
        raise CalibrationDataError(str(exc)) from exc
    return PatchSet.from_pairs(pairs, description=f"{manifest} ({split})")


class CalibrationReader(CalibrationDataReader):
    """ONNX Runtime calibration data reader over a ``PatchSet`` (batches of ``batch_size``)."""

    def __init__(self, patches: PatchSet, *, batch_size: int = 8, input_name: str = INPUT_NAME):
        super().__init__()
        self.patches = patches
        self.batch_size = batch_size
        self.input_name = input_name
        self._it: Iterator[np.ndarray] | None = None
        self.rewind()

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next feed dict, None at the end."""
        batch = next(self._it, None)
        return None if batch is None else {self.input_name: batch}

    def rewind(self) -> None:
        """Start again from the first patch."""
        self._it = self.patches.batches(self.batch_size)

    def __len__(self) -> int:
        return (len(self.patches) + self.batch_size - 1) // self.batch_size


def dice_points(pred: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """Mean foreground Dice in points (0-100) of label maps over a whole patch set.

    For each class k in 1..C: ``2 |P_k & G_k| / (|P_k| + |G_k|)`` with the counts summed over all
    patches; the mean is over classes present in the prediction or the reference (100 when none is).

    Args:
        pred: (N, H, W) predicted labels.
        labels: (N, H, W) reference labels.
        num_classes: foreground classes C.
    """
    if pred.shape != labels.shape:
        raise ValueError(f"pred and labels must have the same shape, got {pred.shape} and {labels.shape}")
    scores = []
    for k in range(1, num_classes + 1):
        p, g = pred == k, labels == k
        denom = int(p.sum()) + int(g.sum())
        if denom:
            scores.append(2.0 * int(np.logical_and(p, g).sum()) / denom)
    return 100.0 * float(np.mean(scores)) if scores else 100.0


__all__ = [
    "CalibrationDataError",
    "CalibrationReader",
    "PatchSet",
    "dice_points",
    "load_manifest_patches",
    "load_npz",
    "save_npz",
]
