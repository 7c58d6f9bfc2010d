"""The calibration / validation data contract and the Dice used to compare variants."""

from __future__ import annotations

import numpy as np
import pytest

from model_export.export.calibration import (
    CalibrationDataError,
    CalibrationReader,
    PatchSet,
    dice_points,
    load_manifest_patches,
    load_npz,
    save_npz,
)


def test_dice_points_by_hand():
    labels = np.zeros((1, 4, 4), np.int64)
    labels[0, :2, :2] = 1  # 4 pixels
    pred = np.zeros_like(labels)
    pred[0, :2, :3] = 1  # 6 pixels, 4 shared
    assert dice_points(pred, labels, 1) == pytest.approx(100 * 2 * 4 / 10)
    # Class 2 absent from both: not averaged in.
    assert dice_points(pred, labels, 2) == pytest.approx(80.0)
    assert dice_points(np.zeros_like(labels), np.zeros_like(labels), 1) == 100.0


def test_npz_round_trip_and_reader(tmp_path):
    images = np.random.default_rng(0).standard_normal((5, 1, 32, 48)).astype(np.float32)
    labels = np.zeros((5, 32, 48), np.uint8)
    path = save_npz(tmp_path / "c.npz", PatchSet(images, labels))
    patches = load_npz(path)
    np.testing.assert_array_equal(patches.images, images)
    assert patches.labels.dtype == np.int64 and patches.description == "c.npz"
    batches = list(CalibrationReader(patches, batch_size=2))
    assert [b["image"].shape[0] for b in batches] == [2, 2, 1]
    assert len(patches.head(3)) == 3


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((1, 1, 16, 16), np.float32)}, "no 'images' array"),
        ({"images": np.zeros((1, 16, 16), np.float32)}, r"\(N, C, H, W\)"),
        ({"images": np.zeros((1, 1, 20, 16), np.float32)}, "multiples of 16"),
        ({"images": np.full((1, 1, 16, 16), np.nan, np.float32)}, "NaN"),
        ({"images": np.zeros((1, 1, 16, 16), np.int16)}, "must be float"),
        ({"images": np.zeros((2, 1, 16, 16), np.float32), "labels": np.zeros((2, 16, 32))}, "labels must be"),
        ({"images": np.zeros((0, 1, 16, 16), np.float32)}, "empty"),
    ],
)
def test_bad_npz_is_named(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(CalibrationDataError, match=message):
        load_npz(path)


def test_unreadable_or_missing_npz(tmp_path):
    with pytest.raises(CalibrationDataError, match="not found"):
        load_npz(tmp_path / "missing.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip")
    with pytest.raises(CalibrationDataError, match="cannot read"):
        load_npz(junk)


def test_from_pairs():
    img = np.zeros((1, 16, 16), np.float32)
    lab = np.zeros((16, 16), np.int64)
    assert len(PatchSet.from_pairs([(img, lab), (img, lab)])) == 2
    assert PatchSet.from_pairs([(img, None)]).labels is None
    with pytest.raises(CalibrationDataError, match="differs from the first"):
        PatchSet.from_pairs([(img, lab), (np.zeros((1, 32, 16), np.float32), None)])
    with pytest.raises(CalibrationDataError, match="some patches only"):
        PatchSet.from_pairs([(img, lab), (img, None)])
    with pytest.raises(CalibrationDataError, match="no calibration patches"):
        PatchSet.from_pairs([])


def test_manifest_hook_fails_clearly_without_pipeline(tmp_path):
    import importlib.util

    if importlib.util.find_spec("model_export.data") is not None:
        pytest.skip("model_export.data is installed: the hook is wired by the data pipeline")
    with pytest.raises(CalibrationDataError, match="model_export.data"):
        load_manifest_patches(tmp_path / "manifest.json")
