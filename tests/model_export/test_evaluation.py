"""Volume-level evaluation: metrics against hand-computed values, target region, checkpoint evaluation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from model_export.checkpoint import save_checkpoint
from model_export.cli import main
from model_export.data.manifest import load_manifest
from model_export.evaluation import (
    EvaluationResult,
    crop_region,
    evaluate_checkpoint,
    predict_slices,
    segmentation_metrics,
    target_region,
)
from model_export.nets import build_model
from msdn_core.card import Normalization
from tests.model_export.tiny_data import write_tiny_dataset


def test_dice_iou_by_hand():
    truth = np.zeros((4, 10, 10), np.uint8)
    pred = np.zeros_like(truth)
    truth[1:3, 2:6, 2:6] = 1  # 32 voxels
    pred[1:3, 4:8, 2:6] = 1  # 32 voxels, overlap 2 x 2 x 4 = 16
    m = segmentation_metrics(pred, truth, 1, (1.0, 1.0, 1.0))
    assert m["dice"][0] == pytest.approx(2 * 16 / 64)
    assert m["iou"][0] == pytest.approx(16 / 48)


def test_hd95_in_millimetres():
    truth = np.zeros((3, 12, 12), np.uint8)
    pred = np.zeros_like(truth)
    truth[1, 5, 2] = 1
    pred[1, 5, 6] = 1  # 4 columns away, columns are 0.5 mm apart
    m = segmentation_metrics(pred, truth, 1, (2.0, 0.7, 0.5))
    assert m["hd95"][0] == pytest.approx(2.0)
    assert m["dice"][0] == 0.0
    pred2 = np.zeros_like(truth)
    pred2[2, 5, 2] = 1  # one slice away: 2 mm
    assert segmentation_metrics(pred2, truth, 1, (2.0, 0.7, 0.5))["hd95"][0] == pytest.approx(2.0)
    same = segmentation_metrics(truth, truth, 1, (2.0, 0.7, 0.5))
    assert same["dice"][0] == 1.0 and same["hd95"][0] == 0.0
    empty = segmentation_metrics(np.zeros_like(truth), truth, 1, (1.0, 1.0, 1.0))
    assert empty["dice"][0] == 0.0 and empty["hd95"][0] is None  # msdn_core.metrics: empty in one


def test_two_classes_and_absent_class():
    truth = np.zeros((2, 8, 8), np.uint8)
    truth[0, :4, :4] = 1
    pred = truth.copy()
    m = segmentation_metrics(pred, truth, 2, (1, 1, 1))
    assert m["dice"][0] == 1.0 and m["dice"][1] is None and m["hd95"][1] is None  # empty in both
    r = EvaluationResult(["a", "b"], "full", [{"case_id": "x", **m}])
    assert r.mean("dice")[0] == 1.0 and math.isnan(r.mean("dice")[1]) and r.mean_dice == 1.0


def test_target_region():
    mask = np.zeros((10, 50, 40), np.uint8)
    mask[4:6, 20:30, 5:9] = 1
    zs, ys, xs = target_region(mask, patch_size=32, margin=4, z_margin=2)
    assert (zs.start, zs.stop) == (2, 8)
    assert ys.stop - ys.start == 32 and xs.stop - xs.start == 32
    assert ys.start <= 20 and ys.stop >= 30 and xs.start <= 5 and xs.stop >= 9
    assert xs.start == 0  # the crop policy: centred on the target, then shifted inside the image
    crop = crop_region(mask, (zs, ys, xs), 0)
    assert crop.shape == (6, 32, 32) and crop.sum() == mask.sum()
    narrow = np.zeros((10, 50, 20), np.uint8)
    narrow[4:6, 20:30, 5:9] = 1
    _, _, xs = target_region(narrow, patch_size=32, margin=4, z_margin=2)
    assert (xs.start, xs.stop) == (-9, 23)  # narrower than the patch: centred on the target (7), image inside
    with pytest.raises(ValueError, match="empty"):
        target_region(np.zeros((2, 4, 4)))


def test_predict_slices_pads_and_crops_back():
    torch.manual_seed(0)
    model = build_model("unet", preset="small", base_channels=4).eval()
    image = np.random.default_rng(0).normal(size=(3, 20, 37)).astype(np.float32)
    out = predict_slices(model, image, Normalization(0.0, 1.0), batch_size=2)
    assert out.shape == (3, 20, 37) and out.dtype == np.uint8
    x = torch.zeros(3, 1, 32, 48)
    x[:, 0, :20, :37] = torch.from_numpy(image)
    x[:, 0, 20:, :] = float(image.min())
    x[:, 0, :, 37:] = float(image.min())
    with torch.no_grad():
        expected = model.segment(x).argmax(1)[:, :20, :37].numpy()
    np.testing.assert_array_equal(out, expected)


def test_evaluate_checkpoint_and_command(tmp_path, capsys):
    manifest = load_manifest(write_tiny_dataset(tmp_path / "data", strong=1, weak=0, val=1, test=2))
    torch.manual_seed(0)
    model = build_model("unet", preset="small", base_channels=4)
    ckpt = save_checkpoint(
        tmp_path / "m.pt", model, classes=["blob"], normalization={"mean": -800, "std": 200}, patch_size=(32, 32)
    )
    result = evaluate_checkpoint(ckpt, manifest.split("test"))
    assert [r["case_id"] for r in result.cases] == [c.id for c in manifest.split("test")]
    assert all(0.0 <= r["dice"][0] <= 1.0 for r in result.cases)
    out_json = tmp_path / "eval.json"
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(ckpt),
            "--manifest",
            str(manifest.path),
            "--region",
            "full",
            "--json",
            str(out_json),
        ]
    )
    assert code in (0, 1)
    text = capsys.readouterr().out
    assert "mean blob: Dice" in text and "region full" in text

    def no_constants(name):
        raise AssertionError(f"non-standard JSON constant {name}")

    data = json.loads(out_json.read_text(), parse_constant=no_constants)
    assert data["region"] == "full" and data["num_cases"] == 2 and len(data["cases"]) == 2
    assert main(["evaluate", "--checkpoint", str(tmp_path / "nope.pt"), "--manifest", str(manifest.path)]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
