"""Run by ``torchrun`` in test_distributed.py: train with DDP, then save this rank's weights."""

import sys
from pathlib import Path

import torch

from model_export.data.manifest import load_manifest
from model_export.training import TrainConfig
from model_export.training.trainer import Trainer

manifest_path, out_dir = sys.argv[1], Path(sys.argv[2])
manifest = load_manifest(manifest_path)
config = TrainConfig(
    model="msdn",
    preset="small",
    model_options={"base_channels": 4, "head_channels": 8},
    patch_size=32,
    lr=2e-3,
    max_epochs=2,
    steps_per_epoch=3,
    progress=False,
    threads=1,
    device="cpu",
)
trainer = Trainer(
    config,
    train_cases=manifest.split("train"),
    val_cases=manifest.split("val"),
    classes=manifest.class_names,
    out_dir=out_dir,
)
result = trainer.fit()
rank = trainer.dist.rank
torch.save({k: v.clone() for k, v in trainer.module.state_dict().items()}, out_dir / f"rank{rank}_weights.pt")
(out_dir / f"rank{rank}_info.txt").write_text(
    f"{trainer.dist.world_size} {len(trainer.sampler)} {result.best_val_dice!r}"
)
torch.distributed.destroy_process_group()
