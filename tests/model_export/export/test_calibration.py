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


def test_manifest_patches_are_normalised_target_crops(tmp_path):
    import json

    from model_export.data.volumes import write_nifti

    image = np.full((4, 64, 64), -1000.0, np.float32)
    image[1:3, 20:30, 24:36] = 100.0
    mask = (image > 0).astype(np.uint8)
    write_nifti(tmp_path / "img.nii.gz", image, spacing=(2.0, 1.0, 1.0))
    write_nifti(tmp_path / "mask.nii.gz", mask, spacing=(2.0, 1.0, 1.0))
    cases = [{"id": "a", "split": "train", "image": "img.nii.gz", "mask": "mask.nii.gz"}]
    (tmp_path / "manifest.json").write_text(json.dumps({"cases": cases}))
    norm = {"mean": -500.0, "std": 250.0, "clip": [-1000.0, 400.0]}
    patches = load_manifest_patches(tmp_path / "manifest.json", normalization=norm, patch_size=32, limit=8)
    assert patches.images.shape == (2, 1, 32, 32)  # the two slices holding the target
    assert patches.labels is not None and patches.labels.sum(axis=(1, 2)).tolist() == [120, 120]
    # normalised by the card's statistics: -1000 HU -> -2, 100 HU -> 2.4
    np.testing.assert_allclose(np.unique(patches.images), [-2.0, 2.4], rtol=1e-6)
    with pytest.raises(CalibrationDataError, match="no case with a mask"):
        load_manifest_patches(tmp_path / "manifest.json", split="val")
