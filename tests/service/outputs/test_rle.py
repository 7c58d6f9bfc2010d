"""service.outputs.rle."""

from __future__ import annotations

import numpy as np

from service.outputs.rle import decode, encode


def test_encode_by_hand():
    labels = np.array([[[0, 1, 1, 0], [2, 2, 0, 1]]], np.uint8)  # (1, 2, 4); flat 0 1 1 0 2 2 0 1
    rle = encode(labels)
    assert rle["shape"] == [1, 2, 4] and rle["order"] == "C"
    assert (rle["starts"], rle["lengths"], rle["values"]) == ([1, 4, 7], [2, 2, 1], [1, 2, 1])


def test_runs_cross_row_and_slice_boundaries():
    labels = np.zeros((2, 2, 2), np.uint8)
    labels[0, 1, 1] = labels[1, 0, 0] = 3  # flat indices 3 and 4: one run
    rle = encode(labels)
    assert (rle["starts"], rle["lengths"], rle["values"]) == ([3], [2], [3])


def test_round_trip_random_and_empty():
    labels = np.random.default_rng(1).integers(0, 3, size=(5, 7, 9)).astype(np.uint8)
    np.testing.assert_array_equal(decode(encode(labels)), labels)
    empty = np.zeros((2, 3, 4), np.uint8)
    assert encode(empty)["starts"] == []
    np.testing.assert_array_equal(decode(encode(empty)), empty)
