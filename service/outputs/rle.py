"""Run-length encoding of label volumes (the ``mask`` of the JSON answer).

Format::

    {"encoding": "rle", "shape": [Z, Y, X], "order": "C", "dtype": "uint8",
     "starts": [...], "lengths": [...], "values": [...]}

The label volume is flattened in C (row-major) order, i.e. flat index = (z * Y + y) * X + x. Each run
is a maximal stretch of equal non-zero labels: it begins at flat index ``starts[i]``, spans
``lengths[i]`` voxels and holds label ``values[i]``; every voxel in no run is background (0). Runs
are in increasing order of ``starts``. ``decode`` inverts ``encode``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def foreground_slabs(labels: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of each stretch of consecutive slices (axis 0) holding a non-zero label."""
    if labels.size == 0:
        return []
    occupied = labels.reshape(labels.shape[0], -1).any(axis=1)
    edges = np.flatnonzero(np.diff(np.concatenate(([False], occupied, [False])).astype(np.int8)))
    return [(int(a), int(b)) for a, b in zip(edges[0::2], edges[1::2], strict=True)]


def _runs(flat: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    run_starts = np.concatenate(([0], change))
    run_lengths = np.diff(np.concatenate((run_starts, [flat.size])))
    run_values = flat[run_starts]
    keep = run_values != 0
    return run_starts[keep] + offset, run_lengths[keep], run_values[keep]


def encode(labels: np.ndarray) -> dict[str, Any]:
    """RLE of an integer label array (see module docstring).

    Only the slabs of slices holding labels are scanned (a run never crosses an empty slice), so a
    box-mode answer with a few labelled slices costs little more than those slices.
    """
    labels = np.ascontiguousarray(labels)
    if labels.ndim == 0:
        labels = labels.reshape(1)
    per_slice = int(np.prod(labels.shape[1:], dtype=np.int64))
    parts = [_runs(labels[a:b].ravel(), a * per_slice) for a, b in foreground_slabs(labels)]
    if parts:
        starts, lengths, values = (np.concatenate(p) for p in zip(*parts, strict=True))
    else:
        starts = lengths = values = np.zeros(0, np.int64)
    return {
        "encoding": "rle",
        "shape": [int(v) for v in labels.shape],
        "order": "C",
        "dtype": "uint8",
        "starts": starts.astype(np.int64).tolist(),
        "lengths": lengths.astype(np.int64).tolist(),
        "values": values.astype(np.int64).tolist(),
    }


def decode(rle: dict[str, Any]) -> np.ndarray:
    """The label array of an ``encode`` result."""
    if rle.get("encoding") != "rle" or rle.get("order") != "C":
        raise ValueError("expected {'encoding': 'rle', 'order': 'C', ...}")
    shape = tuple(int(v) for v in rle["shape"])
    flat = np.zeros(int(np.prod(shape)), np.uint8)
    for start, length, value in zip(rle["starts"], rle["lengths"], rle["values"], strict=True):
        flat[start : start + length] = value
    return flat.reshape(shape)
