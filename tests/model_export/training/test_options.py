"""Training options for whole-series use and the issue-10 ablations, each checked against hand values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from model_export.checkpoint import load_checkpoint, read_checkpoint
from model_export.data.manifest import Case, load_manifest
from model_export.data.sampling import (
    PatchDataset,
    component_boxes,
    hard_negative_centres,
    label_objects,
    load_volume,
    object_slice_boxes,
)
from model_export.data.volumes import write_nifti
from model_export.losses import soft_dice_loss
from model_export.nets import build_model
from model_export.training import TrainConfig, train
from model_export.training.series_validation import pick_slices, series_scores
from model_export.training.step import LossOptions, batch_loss
from model_export.training.trainer import CompositionBatchSampler
from msdn_core.card import Normalization
from tests.model_export.tiny_data import write_tiny_dataset

TINY = {"base_channels": 4, "head_channels": 8, "head_convs": 1}


# -- configuration ------------------------------------------------------------------------------------
def test_config_parses_and_validates_the_new_options():
    assert TrainConfig().composition() is None
    assert TrainConfig(batch_composition="3:1").composition() == (3, 1)
    for kw, msg in [
        ({"batch_composition": "2:1"}, "S \\+ W must equal batch_size 4"),
        ({"batch_composition": "half"}, "proportional' or 'S:W'"),
        ({"away_fraction": 0.6, "hard_negative_fraction": 0.6}, "<= 1"),
        ({"box_mode": "blob"}, "box_mode must be one of"),
        ({"selection": "test"}, "selection must be one of"),
        ({"det_loss_weight": -1}, "det_loss_weight"),
        ({"seg_ce_weight": -0.5}, "seg_ce_weight"),
        ({"time_limit_minutes": 0}, "time_limit_minutes"),
        ({"val_negative_slices": -1}, "val_negative_slices"),
        ({"model": "unet", "box_constraints": {"band_width": 0}}, "band_width"),
        ({"model": "unet", "box_constraints": {"bands": 3}}, "box_constraints: .*bands"),
        ({"model": "unet", "box_constraints": "on"}, "box_constraints must be None or a dict"),
        ({"model": "msdn", "box_constraints": {}}, "segmentation-only models"),
    ]:
        with pytest.raises(ValueError, match=msg):
            TrainConfig(**kw)
    cfg = TrainConfig(batch_composition="2:2", det_on_strong=False, fit_anchors=True)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_resume_key_of_default_options_is_unchanged():
    # runs trained before these options existed must stay resumable: defaults add no key
    assert set(TrainConfig().resume_key()) == {
        "model", "preset", "model_options", "patch_size", "batch_size", "seed", "clip", "away_fraction"
    }  # fmt: skip
    assert TrainConfig(box_mode="object").resume_key()["box_mode"] == "object"
    assert TrainConfig(model="unet", box_constraints={}).resume_key()["box_constraints"] == {}


# -- batch composition --------------------------------------------------------------------------------
def test_composition_sampler_gives_fixed_strong_and_weak_rows():
    flags = np.array([True] * 3 + [False] * 10)
    sampler = CompositionBatchSampler(flags, 7, 2, 2, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 7
    for b in batches:
        assert flags[b].tolist() == [True, True, False, False]
    # strong items are cycled through: 14 strong rows over 3 items -> each 4 or 5 times
    counts = np.bincount(np.concatenate([b[:2] for b in batches]), minlength=3)
    assert sorted(counts.tolist()) == [4, 5, 5]
    assert list(CompositionBatchSampler(flags, 7, 2, 2, seed=1)) == batches
    sampler.set_epoch(1)
    assert list(sampler) != batches
    only_strong = list(CompositionBatchSampler(np.ones(4, bool), 3, 2, 2))
    assert all(len(b) == 4 for b in only_strong)


# -- losses -------------------------------------------------------------------------------------------
def test_foreground_only_dice_by_hand():
    labels = torch.zeros(2, 4, 4, dtype=torch.int64)
    labels[0, :2, :2] = 1  # 4 foreground pixels in row 0, none in row 1
    p_fg = torch.zeros(2, 4, 4)
    p_fg[0, :2, :2] = 1.0  # perfect on row 0
    p_fg[1, 0, 0] = 0.5  # a false positive of mass 0.5 on row 1
    probs = torch.stack([1 - p_fg, p_fg], dim=1)
    # pooled over the batch: 1 - (2 * 4 + eps) / (4.5 + 4 + eps)
    eps = 1e-5
    expected = 1 - (8 + eps) / (8.5 + eps)
    assert float(soft_dice_loss(probs, labels, foreground_only=True)) == pytest.approx(expected, abs=1e-6)
    # the paper's Dice also counts the background, per sample
    bg0 = (2 * 12 + eps) / (24 + eps)
    fg0 = 1.0
    bg1 = (2 * 15.5 + eps) / (15.5 + 16 + eps)
    fg1 = eps / (0.5 + eps)
    assert float(soft_dice_loss(probs, labels)) == pytest.approx(1 - (bg0 + fg0 + bg1 + fg1) / 4, abs=1e-5)


def _batch(strong_rows: list[bool], size: int = 32):
    torch.manual_seed(0)
    b = len(strong_rows)
    label = torch.zeros(b, size, size, dtype=torch.int64)
    label[:, 8:16, 10:20] = 1
    targets = [{"boxes": torch.tensor([[10.0, 8.0, 20.0, 16.0]]), "labels": torch.tensor([1])} for _ in strong_rows]
    return {
        "image": torch.randn(b, 1, size, size),
        "label": label,
        "strong": torch.tensor(strong_rows),
        "targets": targets,
    }


def test_detection_loss_weight_and_strong_rows():
    torch.manual_seed(0)
    model = build_model("msdn", preset="small", **TINY).eval()
    batch = _batch([True, False, False])
    cpu = torch.device("cpu")
    full = batch_loss(model, model, batch, cpu)
    assert full["total"].item() == pytest.approx((full["seg_dice"] + full["det_cls"] + full["det_box"]).item())
    weighted = batch_loss(model, model, batch, cpu, options=LossOptions(det_weight=0.25))
    expected = weighted["seg_dice"] + 0.25 * (weighted["det_cls"] + weighted["det_box"])
    assert weighted["total"].item() == pytest.approx(expected.item(), rel=1e-6)
    # paper rule: strong rows give only the segmentation loss; the detection loss is that of the weak rows
    paper = batch_loss(model, model, batch, cpu, options=LossOptions(det_on_strong=False))
    out = model(batch["image"])
    weak = model.det_unit.loss(
        [t[1:] for t in out["cls_logits"]], [t[1:] for t in out["box_deltas"]], batch["targets"][1:], out["det_sizes"]
    )
    assert paper["det_cls"].item() == pytest.approx(weak["det_cls"].item(), rel=1e-5)
    assert paper["seg_dice"].item() == pytest.approx(full["seg_dice"].item(), rel=1e-6)
    strong_only = batch_loss(model, model, _batch([True, True]), cpu, options=LossOptions(det_on_strong=False))
    assert set(strong_only) == {"seg_dice", "total"}
    # Dice + cross-entropy: the CE of the strong rows' probabilities, weighted into the total
    with_ce = batch_loss(model, model, batch, cpu, options=LossOptions(seg_ce_weight=0.5))
    probs = model(batch["image"][:1], seg_mask=batch["strong"][:1])["segmentation"]
    ce = torch.nn.functional.nll_loss(torch.log(probs.clamp_min(1e-7)), batch["label"][:1])
    assert with_ce["seg_ce"].item() == pytest.approx(ce.item(), rel=1e-5)
    parts = with_ce["seg_dice"] + 0.5 * with_ce["seg_ce"] + with_ce["det_cls"] + with_ce["det_box"]
    assert with_ce["total"].item() == pytest.approx(parts.item(), rel=1e-6)
    assert "seg_ce" not in full


def test_detached_gates_keep_the_segmentation_loss_out_of_the_detection_encoder():
    x = torch.randn(2, 1, 32, 32)
    labels = torch.zeros(2, 32, 32, dtype=torch.int64)
    labels[:, 4:12, 4:12] = 1
    grads = {}
    for detach in (False, True):
        torch.manual_seed(0)
        model = build_model("msdn", preset="small", detach_gates=detach, **TINY)
        loss = soft_dice_loss(model.segment(x), labels)
        loss.backward()
        grads[detach] = sum(float(p.grad.abs().sum()) for p in model.det_encoder.parameters() if p.grad is not None)
    assert grads[False] > 0 and grads[True] == 0
    assert build_model("msdn", preset="small", detach_gates=True, **TINY).config.to_dict()["detach_gates"] is True


# -- boxes per object ---------------------------------------------------------------------------------
def test_one_box_per_3d_object_even_where_its_slice_falls_apart():
    mask = np.zeros((3, 12, 12), np.uint8)
    mask[0, 2:4, 2:10] = 1  # a bridge on slice 0 ...
    mask[1, 2:4, 2:4] = 1  # ... joins two pieces on slice 1 into one object
    mask[1, 2:4, 8:10] = 1
    mask[2, 9:11, 9:11] = 1  # another object: separated by a gap from the first
    objects, classes = label_objects(mask)
    assert objects.max() == 2 and classes.tolist() == [0, 1, 1]
    per_object = object_slice_boxes(objects, classes)
    assert per_object[1][0].tolist() == [[2.0, 2.0, 10.0, 4.0]]
    assert component_boxes(mask[1])[0].tolist() == [[2.0, 2.0, 4.0, 4.0], [8.0, 2.0, 10.0, 4.0]]
    assert per_object[2][0].tolist() == [[9.0, 9.0, 11.0, 11.0]]


# -- hard negatives and away patches from every case --------------------------------------------------
def _write(root, name, image, mask):
    write_nifti(root / f"{name}.nii.gz", image, spacing=(1.0, 1.0, 1.0))
    write_nifti(root / f"{name}_m.nii.gz", mask, spacing=(1.0, 1.0, 1.0))
    return Case(name, "train", root / f"{name}.nii.gz", root / f"{name}_m.nii.gz")


def test_hard_negatives_sit_on_target_like_structures_away_from_targets(tmp_path):
    image = np.full((4, 64, 64), -850.0, np.float32)
    mask = np.zeros((4, 64, 64), np.uint8)
    image[:, 10:16, 10:13] = 40.0  # the target: half solid, half ground-glass
    image[:, 10:16, 13:16] = -600.0
    mask[:, 10:16, 10:16] = 1
    image[:, 44:47, 50:53] = 40.0  # a vessel-like blob of the same density, far away
    image[:, :, 62:] = 40.0  # a wide wall of the same density: its surroundings are not dark
    empty = np.zeros_like(mask)
    target = _write(tmp_path, "t", image, mask)
    free = _write(tmp_path, "f", np.full_like(image, -850.0), empty)
    vol = load_volume(target)
    centres = hard_negative_centres(vol, (-600.0, 40.0))
    assert len(centres)
    assert np.all((np.abs(centres[:, 1] - 45) <= 2) & (np.abs(centres[:, 2] - 51) <= 2))
    ds = PatchDataset(
        [target, free],
        normalization=Normalization(),
        patch_size=16,
        hard_negative_fraction=1.0,
        flip=False,
        noise_std=0.0,
        away_cases="all",
    )
    assert ds.target_range == (-600.0, 40.0)
    seen = set()
    for epoch in range(6):
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            item = ds[i]
            seen.add(item["case_id"])
            if item["case_id"] == "t":  # centred (jitter 1/8 patch) on the blob: it is in the patch
                assert float(item["image"].max()) == 40.0 and item["label"].sum() == 0
    assert seen == {"t", "f"}  # the target-free case falls back to away patches and is seen
    with pytest.raises(ValueError, match="away_cases"):
        PatchDataset([target], normalization=Normalization(), away_cases="any")


# -- whole-series validation --------------------------------------------------------------------------
def test_pick_slices():
    fg = np.zeros(20, bool)
    fg[5:15] = True
    # foreground 5..14 -> positions 0, 4.5, 9 of it (numpy rounds 4.5 to 4): slices 5, 9, 14; negatives: first, last
    assert pick_slices(fg, max_fg_slices=3, negative_slices=2) == [0, 5, 9, 14, 19]
    assert pick_slices(np.zeros(4, bool), max_fg_slices=3, negative_slices=8) == [0, 1, 2, 3]


class _Threshold(torch.nn.Module):
    """A 'model' that segments pixels above 0: a fixed, known prediction to score."""

    def segment(self, x):
        fg = (x > 0).float()
        return torch.cat([1 - fg, fg], dim=1)


def test_series_scores_by_hand(tmp_path):
    image = np.full((6, 20, 20), -1.0, np.float32)
    mask = np.zeros((6, 20, 20), np.uint8)
    mask[2:4, 5:9, 5:9] = 1  # 32 reference voxels on slices 2-3
    image[2:4, 5:9, 5:9] = 1.0
    image[2, 5:9, 9:13] = 1.0  # 16 false-positive voxels touching the reference (same component)
    image[0, 15:17, 15:17] = 1.0  # a separate false-positive blob on slice 0 (a negative slice)
    image[5, 0:2, 0:2] = 1.0  # and one on slice 5, which is not sampled with negative_slices=1
    empty_img = np.full((6, 20, 20), -1.0, np.float32)
    empty_img[3, 1:3, 1:3] = 1.0
    cases = [_write(tmp_path, "a", image, mask), _write(tmp_path, "b", empty_img, np.zeros_like(mask))]
    vols = [load_volume(c) for c in cases]
    out = series_scores(
        _Threshold(), vols, Normalization(), device=torch.device("cpu"), negative_slices=1, fp_penalty=0.1
    )
    # case a: slices 2, 3 (foreground) + slice 0 (one negative): predicted 32 + 16 + 4 (the blob on slice 0)
    # voxels -> Dice 2*32 / (52 + 32), one FP component
    assert out["per_case"]["a"] == {"dice": pytest.approx(64 / 84), "fp": 1}
    # case b: no foreground; one negative slice (0) -> no prediction there
    assert math.isnan(out["per_case"]["b"]["dice"]) and out["per_case"]["b"]["fp"] == 0
    assert out["score"] == pytest.approx(64 / 84 - 0.1 * 0.5) and out["slices"] == 4


# -- the trainer with every option, recorded in the checkpoint ----------------------------------------
@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return load_manifest(write_tiny_dataset(tmp_path_factory.mktemp("opts"), strong=3, weak=3, val=2, test=1))


def test_trainer_with_whole_series_options_records_them(manifest, tmp_path):
    cfg = TrainConfig(
        model="msdn",
        preset="small",
        model_options={**TINY, "detection_strides": [8, 4, 2, 1], "detach_gates": True},
        patch_size=32,
        lr=2e-3,
        max_epochs=2,
        steps_per_epoch=3,
        progress=False,
        threads=1,
        batch_composition="2:2",
        hard_negative_fraction=0.25,
        away_fraction=0.25,
        away_cases="all",
        box_mode="object",
        dice_foreground_only=True,
        det_loss_weight=0.5,
        seg_ce_weight=1.0,
        det_on_strong=False,
        fit_anchors=True,
        anchors_per_level=2,
        selection="series",
        val_negative_slices=2,
    )
    result = train(cfg, manifest, tmp_path / "run")
    assert all("val_score" in row and "val_series_dice" in row for row in result.history)
    assert result.best_val_dice == max(row["val_score"] for row in result.history)
    payload = read_checkpoint(result.best_path)
    training = payload["card"]["training"] if "card" in payload else payload["training"]
    assert all(row["loss_seg_ce"] > 0 for row in result.history)
    keys = ("batch_composition", "box_mode", "det_on_strong", "selection", "hard_negative_fraction", "seg_ce_weight")
    for key in keys:
        assert training[key] == cfg.to_dict()[key]
    anchors = training["anchors"]
    assert anchors["recall"] >= anchors["recall_preset"] and anchors["training_boxes"] > 0
    model, _, _ = load_checkpoint(result.best_path)
    assert model.config.detach_gates and model.config.detection_strides == (8, 4, 2, 1)
    assert model.det_unit.num_anchors == 2
    assert [[list(a) for a in level] for level in model.config.anchor_shapes] == anchors["anchor_shapes"]
    assert json.loads((tmp_path / "run" / "train_config.json").read_text())["fit_anchors"] is True


def test_time_limit_stops_after_the_first_epoch(manifest, tmp_path):
    cfg = TrainConfig(
        model="unet",
        preset="small",
        model_options={"base_channels": 4},
        patch_size=32,
        max_epochs=5,
        steps_per_epoch=2,
        progress=False,
        threads=1,
        time_limit_minutes=1e-4,
    )
    assert train(cfg, manifest, tmp_path / "run").epochs == 1


def test_unet_with_box_constraints_trains_on_weak_rows_end_to_end(manifest, tmp_path):
    cfg = TrainConfig(
        model="unet",
        preset="small",
        model_options={"base_channels": 4},
        patch_size=32,
        max_epochs=2,
        steps_per_epoch=2,
        progress=False,
        threads=1,
        batch_composition="2:2",
        box_constraints={"band_width": 3, "size_bounds": [0.5, 0.9], "t": 5.0, "t_growth": 2.0},
    )
    result = train(cfg, manifest, tmp_path / "run")
    assert result.epochs == 2
    for row in result.history:
        assert row["mask_rows"] == 2 * 2  # 2 steps x 2 strong rows: weak rows reach only the constraints
        assert all(math.isfinite(row[f"loss_{k}"]) for k in ("seg_dice", "box", "box_empty", "box_tight", "box_size"))
        assert row["loss_total"] == pytest.approx(row["loss_seg_dice"] + row["loss_box"])
    payload = read_checkpoint(result.best_path)
    training = payload["card"]["training"] if "card" in payload else payload["training"]
    assert training["cases_used"] == 6 and training["weak_cases"] == 3  # the weak cases were used
    assert training["box_constraints"]["t_growth"] == 2.0
