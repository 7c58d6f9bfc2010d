"""Named experiment configurations (``msdn experiment --preset``).

- ``paper``: the paper's protocol: lung 160 training cases split 160-0 ... 60-100, cochlea 66 split
  66-0 ... 11-55, five methods, 3 repeats, paper training defaults (paper-size networks, 128x128
  patches, Adam 1e-4, plateau x0.8 after 5 epochs, stop after 20, batch 4). Needs a GPU.
- ``cpu``: the same grid shape sized for a 2-core CPU in about an hour (see docs/results/cpu):
  40 lung / 24 cochlea training cases with the paper's strong fractions (40-0, 30-10, 25-15, 20-20,
  15-25; 24-0, 16-8, 12-12, 8-16, 4-20), 8 validation and 12-16 test cases, ``small`` networks with
  base width 8 and 32-channel detection towers, 64x64 patches, learning rate 1e-3 (ten times the
  paper's, for the short budget), 10 epochs of 30 batches (plateau after 3 epochs without
  improvement; no early stop: the budget is fixed and the best-validation checkpoint is tested),
  2 runs in parallel with 1 thread each.
"""

from __future__ import annotations

from typing import Any

from model_export.experiment.protocol import METHODS, PAPER_TASKS

EXPERIMENT_PRESETS: dict[str, dict[str, Any]] = {
    "paper": {
        "tasks": [{"name": name, "splits": [list(s) for s in splits]} for name, splits in PAPER_TASKS.items()],
        "methods": list(METHODS),
        "repeats": 3,
        "seed": 0,
        "train": {"preset": "paper", "patch_size": 128, "max_epochs": 300},
        "report": "val",
        "jobs": 1,
        "description": "Paper protocol (section 3, Table 1).",
    },
    "cpu": {
        "tasks": [
            {
                "name": "lung",
                "splits": [[40, 0], [30, 10], [25, 15], [20, 20], [15, 25]],
                "train_cases": 40,
                "val_cases": 8,
                "test_cases": 16,
            },
            {
                "name": "cochlea",
                "splits": [[24, 0], [16, 8], [12, 12], [8, 16], [4, 20]],
                "train_cases": 24,
                "val_cases": 8,
                "test_cases": 12,
            },
        ],
        "methods": list(METHODS),
        "repeats": 3,
        "seed": 0,
        "train": {
            "preset": "small",
            "model_options": {"base_channels": 8, "head_channels": 32},
            "patch_size": 64,
            "lr": 1e-3,
            "lr_patience": 3,
            "early_stop": 10,
            "max_epochs": 10,
            "steps_per_epoch": 30,
            "threads": 1,
            "device": "cpu",
        },
        "report": "val",
        "jobs": 2,
        "description": (
            "CPU-sized configuration (`--preset cpu`): synthetic data from `msdn synth` at 128x128x16, "
            "small networks (base width 8), 64x64 patches, lr 1e-3, 10 epochs x 30 batches of 4 (no early stopping)."
        ),
    },
}
