"""Target-centred patch sampling: sizes, containment, boxes through crops and flips, normalisation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model_export.data.manifest import ManifestError, load_manifest
from model_export.data.sampling import (
    Normalization,
    PatchDataset,
    collate_patches,
    component_boxes,
    compute_normalization,
)
from model_export.data.volumes import read_volume, write_nifti
from tests.model_export.tiny_data import write_tiny_dataset


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return load_manifest(write_tiny_dataset(root, strong=3, weak=2, val=1, test=1, shape=(6, 80, 72)))


# -- manifest errors --------------------------------------------------------------------------------


def _write(tmp_path, cases, classes=None):
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps({"classes": classes or [{"value": 1, "name": "t"}], "cases": cases}))
    return path


def test_manifest_errors_name_the_problem(tmp_path):
    img = write_nifti(tmp_path / "img.nii.gz", np.zeros((4, 16, 16), np.float32))
    write_nifti(tmp_path / "mask.nii.gz", np.full((4, 16, 16), 2, np.uint8))
    write_nifti(tmp_path / "small.nii.gz", np.zeros((4, 8, 8), np.uint8))
    del img
    cases = {
        "duplicate id": [{"id": "a", "split": "train", "image": "img.nii.gz", "mask": "mask.nii.gz"}] * 2,
        "split must be one of": [{"id": "a", "split": "training", "image": "img.nii.gz", "mask": "mask.nii.gz"}],
        "needs a 'mask'": [{"id": "a", "split": "train", "image": "img.nii.gz"}],
        "need x1 < x2 and y1 < y2": [
            {"id": "a", "split": "train", "image": "img.nii.gz", "boxes": [{"slice": 0, "box": [5, 5, 5, 9]}]}
        ],
        "outside the image": [
            {"id": "a", "split": "train", "image": "img.nii.gz", "boxes": [{"slice": 0, "box": [5, 5, 20, 9]}]}
        ],
        "outside 0..1": [{"id": "a", "split": "train", "image": "img.nii.gz", "mask": "mask.nii.gz"}],
        "mask shape": [{"id": "a", "split": "train", "image": "img.nii.gz", "mask": "small.nii.gz"}],
        "file not found": [{"id": "a", "split": "train", "image": "nope.nii.gz", "mask": "mask.nii.gz"}],
    }
    for message, raw in cases.items():
        with pytest.raises(ManifestError, match=message):
            load_manifest(_write(tmp_path, raw))
    with pytest.raises(ManifestError, match="not valid JSON"):
        (tmp_path / "bad.json").write_text("{")
        load_manifest(tmp_path / "bad.json")


# -- normalisation ------------------------------------------------------------------------------------


def test_normalization_matches_numpy(manifest):
    cases = manifest.split("train")
    arrays = [read_volume(c.image).array for c in cases]
    both = np.concatenate([a.ravel() for a in arrays]).astype(np.float64)
    norm = compute_normalization(cases)
    assert norm.mean == pytest.approx(both.mean(), rel=1e-9)
    assert norm.std == pytest.approx(both.std(), rel=1e-9)
    clipped = compute_normalization(arrays, clip=(-500, 100))
    assert clipped.mean == pytest.approx(np.clip(both, -500, 100).mean(), rel=1e-9)
    assert clipped.to_dict() == {"mean": clipped.mean, "std": clipped.std, "clip": [-500.0, 100.0]}
    assert Normalization.from_dict(clipped.to_dict()) == clipped
    with pytest.raises(ValueError, match="constant"):
        compute_normalization([np.ones((2, 4, 4))])
    with pytest.raises(ValueError, match="std"):
        Normalization(0.0, 0.0)


# -- crops ------------------------------------------------------------------------------------------


def _dataset(cases, **kw):
    kw.setdefault("normalization", Normalization(-800.0, 200.0))
    kw.setdefault("patch_size", 32)
    return PatchDataset(cases, **kw)


def test_strong_crops_have_patch_size_and_contain_the_whole_target(manifest):
    cases = [c for c in manifest.split("train") if c.strong]
    ds = _dataset(cases, jitter=0.5, seed=3)
    masks = {c.id: read_volume(c.mask, dtype=np.int16).array for c in cases}
    assert len(ds) == sum(int((m.reshape(m.shape[0], -1) > 0).any(1).sum()) for m in masks.values())
    for epoch in range(3):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            assert item["image"].shape == (1, 32, 32) and item["image"].dtype == torch.float32
            assert item["label"].shape == (32, 32) and item["label"].dtype == torch.int64
            assert item["strong"] is True
            # one blob per slice here: every target pixel of the slice is inside the crop
            assert int(item["label"].sum()) == int(masks[item["case_id"]][item["slice"]].sum())
            boxes, labels = component_boxes(item["label"].numpy())
            assert torch.equal(item["boxes"], torch.from_numpy(boxes)) and labels.tolist() == [1]


def test_weak_boxes_follow_crop_and_flips_like_the_mask_would(manifest):
    """A weak case's boxes after crop + flips equal the boxes of its mask cropped and flipped the same way."""
    strong_cases = [c for c in manifest.split("train") if c.strong]
    weak_cases = [c.as_weak() for c in strong_cases]
    a = _dataset(strong_cases, seed=11, jitter=0.4)
    b = _dataset(weak_cases, seed=11, jitter=0.4)
    assert len(a) == len(b)
    flips = set()
    for epoch in range(4):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        for i in range(len(a)):
            sa, wb = a[i], b[i]
            assert wb["strong"] is False and int(wb["label"].abs().sum()) == 0
            assert torch.equal(sa["image"], wb["image"])
            assert torch.allclose(wb["boxes"], sa["boxes"]) and wb["box_labels"].tolist() == [1]
            x1, y1, x2, y2 = wb["boxes"][0].tolist()
            assert 0 <= x1 < x2 <= 32 and 0 <= y1 < y2 <= 32
            flips.add(tuple(sa["image"][0, 0, :2].tolist()))
    assert len(flips) > 4  # the crops really moved / flipped


def test_small_slices_are_padded_and_flip_boxes_keep_order(tmp_path):
    image = np.full((3, 20, 24), -1000, np.float32)
    image[1, 5:9, 10:20] = 100
    mask = np.zeros((3, 20, 24), np.uint8)
    mask[1, 5:9, 10:20] = 1
    write_nifti(tmp_path / "i.nii.gz", image)
    write_nifti(tmp_path / "m.nii.gz", mask)
    cases = [{"id": "w", "split": "train", "image": "i.nii.gz", "boxes": [{"slice": 1, "box": [10, 5, 20, 9]}]}]
    m = load_manifest(_write(tmp_path, cases))
    norm = Normalization(-1000.0, 100.0)
    ds = PatchDataset(m.cases, normalization=norm, patch_size=32, jitter=0.5, noise_std=0.0)
    seen = set()
    for epoch in range(20):
        ds.set_epoch(epoch)
        item = ds[0]
        img = item["image"][0]
        assert img.shape == (32, 32)
        x1, y1, x2, y2 = item["boxes"][0].tolist()
        assert x2 - x1 == 10 and y2 - y1 == 4  # the whole box, never inverted
        # the bright rectangle sits exactly under the box
        inside = img[int(y1) : int(y2), int(x1) : int(x2)]
        assert torch.all(inside == 11.0)  # (100 - -1000) / 100
        assert float(img.sum()) == pytest.approx(11.0 * 40)  # padding is the lowest value -> 0
        seen.add((x1, y1))
    assert len(seen) > 1


def test_validation_crops_are_deterministic_and_centred(manifest):
    cases = manifest.split("val")
    ds = _dataset(cases, augment=False)
    first = [ds[i] for i in range(len(ds))]
    ds.set_epoch(5)
    for i, item in enumerate(first):
        again = ds[i]
        assert torch.equal(item["image"], again["image"]) and torch.equal(item["label"], again["label"])
        ys, xs = np.nonzero(item["label"].numpy())
        # target centre within a pixel of the patch centre (the image is larger than the patch)
        assert abs((xs.min() + xs.max() + 1) / 2 - 16) <= 1 and abs((ys.min() + ys.max() + 1) / 2 - 16) <= 1


def test_augmentation_is_seeded_by_seed_epoch_index(manifest):
    cases = [c for c in manifest.split("train") if c.strong]
    a, b = _dataset(cases, seed=1), _dataset(cases, seed=1)
    a.set_epoch(2)
    b.set_epoch(2)
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(len(a)))
    b.set_epoch(3)
    assert not all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(len(a)))


def test_away_patches_leave_the_target(manifest):
    cases = [c for c in manifest.split("train") if c.strong]
    centred = _dataset(cases, away_fraction=0.0)
    away = _dataset(cases, away_fraction=1.0)

    def with_target(ds):
        return np.mean([bool(ds[i]["label"].any()) for i in range(len(ds))])

    assert with_target(centred) == 1.0
    assert with_target(away) < 0.5
    with pytest.raises(ValueError, match="away_fraction"):
        _dataset(cases, away_fraction=1.5)


def test_collate(manifest):
    cases = manifest.split("train")
    ds = _dataset(cases)
    weak_index = int(np.flatnonzero(~ds.strong_flags)[0])
    batch = collate_patches([ds[0], ds[weak_index], ds[1]])
    assert batch["image"].shape == (3, 1, 32, 32)
    assert batch["label"].shape == (3, 32, 32)
    assert batch["strong"].tolist() == [True, False, True]
    assert [t["boxes"].shape[1] for t in batch["targets"]] == [4, 4, 4]
    assert all(t["labels"].dtype == torch.int64 for t in batch["targets"])
