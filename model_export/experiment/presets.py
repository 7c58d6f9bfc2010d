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
- ``cpu_v2``: protocol 2 (``model_export.experiment.v2``) on the generator-v4 lung set of
  docs/results/cpu_v2 (40/8/40 cases at 128x128x16): learning curve with U-Net at 3, 5, 10 and 40
  strong cases (3 repeats), then U-Net and MSDN (2 strong + 2 weak rows per batch, the paper's losses)
  at the scarcest selected split (8 repeats: what the 2-core budget allows), then the ablation rows
  (3 repeats each, in priority order, as far as the budget goes; ``unet_tight`` last, added after
  the first 37 runs). Base width 8, 48x48 patches,
  lr 1e-3, an epoch of 8 batches of 4 for every method, the paper's schedule (x0.8 after 5 flat
  epochs, stop after 20) capped at 40 epochs.
- ``cpu_v3``: ``cpu_v2`` trained to convergence: the same data, networks, patches and schedule with
  the 40-epoch cap raised to 150 (in ``cpu_v2`` 35 of 37 runs hit the cap before the paper's stopping
  rule ended them), a shorter learning curve (U-Net at 3, 10 and 40 strong cases, 3 repeats), and the
  two main rows (U-Net, MSDN 2:2) with 10 repeats at the scarcest selected split; no ablation rows.
- ``gpu_v2``: protocol 2 at the critical cells with the paper's networks, patches and learning rate,
  for one GPU in about 10 minutes (``scripts/gpu_experiment.sh``): lung 160 training cases, U-Net at
  160, 60 and 12 strong cases, MSDN-, MSDN (2:2 and proportional) at 12-148 and MSDN- at 160-0,
  3 repeats: 21 runs at once on the one GPU.
"""

from __future__ import annotations

from typing import Any

from model_export.experiment.protocol import METHODS, PAPER_TASKS

#: Protocol-2 rows beyond the plain models: the MSDN training options of issue 10 and the
#: box-supervised alternatives. ``det_on_strong=False`` is the paper's loss (strong rows give only the
#: segmentation loss). ``unet_tight``: U-Net with the strong rows' Dice plus the box constraint loss of
#: Kervadec et al. 2020 on the weak rows (``model_export.box_constraints``; the paper's band width 5,
#: size bounds 0.5-0.9 of the box, t = 5 x 1.1 per epoch), 2 strong + 2 weak rows per batch like
#: ``msdn_bal``.
V2_ARMS: dict[str, dict[str, Any]] = {
    "msdn_bal": {
        "model": "msdn",
        "train": {"batch_composition": "2:2", "det_on_strong": False},
        "label": "MSDN (2 strong + 2 weak per batch)",
    },
    "msdn_prop": {
        "model": "msdn",
        "train": {"batch_composition": "proportional", "det_on_strong": False},
        "label": "MSDN (proportional batches, paper)",
    },
    "msdn_bal_detstrong": {
        "model": "msdn",
        "train": {"batch_composition": "2:2", "det_on_strong": True},
        "label": "MSDN 2:2 + detection loss on strong rows",
    },
    "msdn_bal_fg": {
        "model": "msdn",
        "train": {"batch_composition": "2:2", "det_on_strong": False, "dice_foreground_only": True},
        "label": "MSDN 2:2 + foreground-only Dice",
    },
    "unet_fg": {"model": "unet", "train": {"dice_foreground_only": True}, "label": "U-Net + foreground-only Dice"},
    "msdn_bal_s1": {
        "model": "msdn",
        "train": {
            "batch_composition": "2:2",
            "det_on_strong": False,
            "fit_anchors": True,
            "model_options": {"detection_strides": [8, 4, 2, 1]},
        },
        "label": "MSDN 2:2 + stride-1 level, fitted anchors",
    },
    "msdn_bal_detached": {
        "model": "msdn",
        "train": {"batch_composition": "2:2", "det_on_strong": False, "model_options": {"detach_gates": True}},
        "label": "MSDN 2:2, gates detached",
    },
    "msdn_bal_w025": {
        "model": "msdn",
        "train": {"batch_composition": "2:2", "det_on_strong": False, "det_loss_weight": 0.25},
        "label": "MSDN 2:2, detection loss x0.25",
    },
    "unet_box": {"model": "unet", "pseudo": "box", "label": "U-Net + box-filled pseudo-masks"},
    "unet_refined": {"model": "unet", "pseudo": "refined", "label": "U-Net + refined pseudo-masks (1 round)"},
    "unet_tight": {
        "model": "unet",
        "train": {
            "batch_composition": "2:2",
            "box_constraints": {"band_width": 5, "size_bounds": [0.5, 0.9], "t": 5.0, "t_growth": 1.1},
        },
        "label": "U-Net 2:2 + box constraints (emptiness, tightness, size)",
    },
}

#: Training options of the protocol-2 CPU presets (``cpu_v2``, ``cpu_v3``), less the epoch cap.
_CPU_SMALL_TRAIN: dict[str, Any] = {
    "preset": "small",
    "model_options": {"base_channels": 8, "head_channels": 16, "head_convs": 2},
    "patch_size": 48,
    "lr": 1e-3,
    "lr_patience": 5,
    "early_stop": 20,
    "steps_per_epoch": 8,
    "threads": 1,
    "device": "cpu",
}

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
    "cpu_v2": {
        "protocol": 2,
        "tasks": [{"name": "lung", "splits": [[40, 0]], "train_cases": 40, "val_cases": 8, "test_cases": 40}],
        "curve": {"method": "unet", "strong": [3, 5, 10], "repeats": 3, "min_se": 3.0, "max_splits": 2},
        "methods": ["unet", "msdn_bal"],
        "repeats": 8,
        "ablations": {
            "methods": [
                "unet_box",
                "msdn_prop",
                "unet_refined",
                "msdn_bal_detached",
                "msdn_bal_detstrong",
                "msdn_bal_fg",
                "unet_fg",
                "msdn_bal_s1",
                "msdn_minus",
                "unet_tight",
            ],
            "repeats": 3,
            "order": "method",
        },
        "arms": V2_ARMS,
        "seed": 0,
        "train": {**_CPU_SMALL_TRAIN, "max_epochs": 40},
        "report": "val",
        "jobs": 2,
        "description": (
            "Protocol 2 on a 2-core CPU (`--preset cpu_v2`): generator-v4 lung data at 128x128x16, 40/8/40 "
            "cases; small networks (base width 8, detection towers 16 channels x 2 convs), 48x48 patches, "
            "lr 1e-3, epochs of 8 batches of 4 for every method, x0.8 after 5 flat epochs, stop after 20, "
            "at most 40 epochs."
        ),
    },
    "cpu_v3": {
        "protocol": 2,
        "tasks": [{"name": "lung", "splits": [[40, 0]], "train_cases": 40, "val_cases": 8, "test_cases": 40}],
        "curve": {"method": "unet", "strong": [3, 10], "repeats": 3, "min_se": 3.0, "max_splits": 1},
        "methods": ["unet", "msdn_bal"],
        "repeats": 10,
        "ablations": {"methods": [], "repeats": 1},
        "arms": V2_ARMS,
        "seed": 0,
        "train": {**_CPU_SMALL_TRAIN, "max_epochs": 150},
        "report": "val",
        "jobs": 1,
        "description": (
            "Protocol 2 to convergence on a 2-core CPU (`--preset cpu_v3`): generator-v4 lung data at "
            "128x128x16, 40/8/40 cases; small networks (base width 8, detection towers 16 channels x 2 "
            "convs), 48x48 patches, lr 1e-3, epochs of 8 batches of 4 for every method, x0.8 after 5 flat "
            "epochs, stop after 20 (the paper's rule), at most 150 epochs; 10 repeats of the main rows."
        ),
    },
    "gpu_v2": {
        "protocol": 2,
        "tasks": [{"name": "lung", "splits": [[160, 0]], "train_cases": 160, "val_cases": 40, "test_cases": 80}],
        "curve": {"method": "unet", "strong": [12, 60], "repeats": 3, "select": [12]},
        "methods": ["unet", "msdn_minus", "msdn_bal", "msdn_prop"],
        "repeats": 3,
        "ablations": {"methods": [], "repeats": 1},
        "arms": V2_ARMS,
        "seed": 0,
        "train": {
            "preset": "paper",
            "patch_size": 128,
            "lr": 1e-4,
            "lr_patience": 5,
            "early_stop": 20,
            "max_epochs": 50,
            "steps_per_epoch": 40,
            "threads": 1,
            "device": "cuda",
            "amp": True,
        },
        "report": "val",
        "jobs": 21,
        "description": (
            "Protocol 2 at the critical cells on one GPU (`--preset gpu_v2`, scripts/gpu_experiment.sh): "
            "generator-v4 lung data 160/40/80 at 128x128x16, paper networks (base 32, detection towers "
            "256 x 4 convs, strides 8/4/2/1), 128x128 patches, Adam 1e-4, epochs of 40 batches of 4 "
            "(the paper's epoch at 160 cases), x0.8 after 5 flat epochs, stop after 20, at most 50 epochs; "
            "21 runs at once."
        ),
    },
}
