"""The training loop on a tiny data set: loss goes down, checkpoints load, resume is exact, early stop."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch

from model_export.checkpoint import load_checkpoint, read_checkpoint
from model_export.cli import main
from model_export.data.manifest import load_manifest
from model_export.data.sampling import compute_normalization
from model_export.training import TrainConfig, train
from tests.model_export.tiny_data import write_tiny_dataset

TINY = {"base_channels": 4, "head_channels": 8}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return load_manifest(write_tiny_dataset(tmp_path_factory.mktemp("tiny"), strong=3, weak=3, val=2, test=1))


def _config(**kw):
    base = {
        "model": "msdn",
        "preset": "small",
        "model_options": TINY,
        "patch_size": 32,
        "lr": 2e-3,
        "max_epochs": 2,
        "steps_per_epoch": 6,
        "progress": False,
        "threads": 1,
    }
    return TrainConfig(**{**base, **kw})


def test_two_epochs_lower_the_loss_and_write_a_loadable_checkpoint(manifest, tmp_path):
    result = train(_config(), manifest, tmp_path / "run")
    losses = [row["loss_total"] for row in result.history]
    assert len(losses) == 2 and losses[1] < losses[0]
    assert {"loss_seg_dice", "loss_det_cls", "loss_det_box", "val_dice", "val_dice_blob", "lr"} <= set(
        result.history[0]
    )
    model, card, _ = load_checkpoint(result.best_path)
    assert model.config.name == "msdn" and model.config.base_channels == 4
    expected = compute_normalization(manifest.split("train"))
    assert card.input.mean == pytest.approx(expected.mean) and card.input.std == pytest.approx(expected.std)
    assert card.input.patch_size == [32, 32] and [c.name for c in card.classes] == ["blob"]
    assert card.validation_dice == pytest.approx(result.best_val_dice)
    assert card.training["strong_cases"] == 3 and card.training["weak_cases"] == 3
    with torch.no_grad():
        probs = model.segment(torch.zeros(2, 1, 48, 32))
    assert probs.shape == (2, 2, 48, 32)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 48, 32))
    # the metrics files hold one row per epoch
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())[1]["epoch"] == 1
    assert read_checkpoint(result.last_path)["optimizer_state"]["epoch"] == 1


def test_resume_continues_exactly(manifest, tmp_path):
    cfg = _config(model="unet", max_epochs=3, steps_per_epoch=3)
    full = train(cfg, manifest, tmp_path / "full")
    part = train(_config(model="unet", max_epochs=2, steps_per_epoch=3), manifest, tmp_path / "part")
    assert part.epochs == 2
    resumed = train(cfg, manifest, tmp_path / "part", resume=True)
    assert resumed.epochs == 3
    assert [r["loss_total"] for r in resumed.history] == [r["loss_total"] for r in full.history]
    a = torch.load(full.last_path, weights_only=True)["state_dict"]
    b = torch.load(resumed.last_path, weights_only=True)["state_dict"]
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    with pytest.raises(ValueError, match="different options"):
        train(
            _config(model="unet", max_epochs=4, patch_size=48, steps_per_epoch=3),
            manifest,
            tmp_path / "part",
            resume=True,
        )


def test_early_stopping(manifest, tmp_path):
    # a learning rate of 1e-12 changes nothing: the validation Dice never improves after epoch 0
    result = train(_config(model="unet", lr=1e-12, early_stop=2, max_epochs=10, steps_per_epoch=2), manifest, tmp_path)
    assert result.stopped_early and result.epochs == 3 and result.best_epoch == 0


def test_seg_only_models_train_on_strong_cases_only(manifest, tmp_path):
    result = train(_config(model="unet_sse", max_epochs=1, steps_per_epoch=None), manifest, tmp_path)
    _, card, _ = load_checkpoint(result.best_path)
    assert card.training["cases_used"] == 3
    # one pass over the strong training patches: target slices of the 3 strong cases // batch 4
    assert card.training["steps_per_epoch"] >= 1
    assert set(result.history[0]) >= {"loss_seg_dice"} and "loss_det_cls" not in result.history[0]


def test_training_needs_strong_validation_cases(manifest, tmp_path):
    from model_export.training.trainer import Trainer

    with pytest.raises(ValueError, match="no strong validation case"):
        Trainer(_config(), train_cases=manifest.split("train"), val_cases=[], classes=["blob"], out_dir=tmp_path)
    with pytest.raises(ValueError, match="patch_size"):
        _config(patch_size=40)


def test_train_command(manifest, tmp_path, capsys):
    code = main(
        [
            "train",
            "--manifest",
            str(manifest.path),
            "--out",
            str(tmp_path / "cli"),
            "--model",
            "unet",
            "--preset",
            "small",
            "--model-option",
            "base_channels=4",
            "--patch-size",
            "32",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--no-progress",
            "--threads",
            "1",
        ]
    )
    assert code == 0
    assert "best validation Dice" in capsys.readouterr().out
    assert (tmp_path / "cli" / "best.pt").is_file()
    code = main(["train", "--manifest", str(tmp_path / "missing.json"), "--out", str(tmp_path / "x")])
    assert code == 2 and "manifest not found" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_mixed_precision(manifest, tmp_path):
    result = train(_config(device="cuda", amp=True, max_epochs=2), manifest, tmp_path)
    assert result.best_path.is_file() and all(math.isfinite(r["loss_total"]) for r in result.history)
    model, _, _ = load_checkpoint(result.best_path)
    assert next(model.parameters()).device.type == "cpu"  # checkpoints load anywhere


@pytest.mark.parametrize("name", ["unet", "unet_sse", "ms_net", "msdn_minus", "msdn"])
def test_every_model_trains_with_the_same_command(name, manifest, tmp_path):
    code = main(
        [
            "train",
            "--manifest",
            str(manifest.path),
            "--out",
            str(tmp_path),
            "--model",
            name,
            "--preset",
            "small",
            "--model-option",
            "base_channels=4",
            "--model-option",
            "head_channels=8",
            "--patch-size",
            "32",
            "--epochs",
            "1",
            "--steps-per-epoch",
            "2",
            "--no-progress",
        ]
    )
    assert code == 0
    model, card, _ = load_checkpoint(tmp_path / "best.pt")
    assert model.config.name == card.method == name
    assert card.training["cases_used"] == (6 if model.has_detection else 3)


def test_cli_box_constraints_flag(manifest, tmp_path, capsys):
    base = ["train", "--manifest", str(manifest.path), "--model", "unet", "--preset", "small"]
    base += ["--patch-size", "32", "--epochs", "1", "--steps-per-epoch", "1", "--no-progress", "--threads", "1"]
    code = main(base + ["--out", str(tmp_path / "ok"), "--box-constraints", '{"size_bounds": [0.5, 0.9]}'])
    assert code == 0, capsys.readouterr().err
    _, card, _ = load_checkpoint(tmp_path / "ok" / "best.pt")
    assert card.training["box_constraints"] == {"size_bounds": [0.5, 0.9]}
    for bad, msg in (('{"band_width": 0}', "band_width"), ("[1]", "JSON object"), ("on", "JSON object")):
        assert main(base + ["--out", str(tmp_path / "bad"), "--box-constraints", bad]) == 2
        assert msg in capsys.readouterr().err
