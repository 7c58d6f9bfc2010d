"""The training loop: Adam, plateau schedule on the validation Dice, early stopping, checkpoints, resume.

Outputs in ``out_dir``:

- ``best.pt``: the weights with the highest mean validation Dice (self-describing, see
  ``model_export.checkpoint``), with the normalisation statistics of the training images.
- ``last.pt``: the latest weights plus optimizer, schedule, early-stopping and RNG state (``resume``).
- ``metrics.csv`` / ``metrics.json``: one row per epoch (losses, learning rate, validation Dice, time).
- ``train_config.json``: the options of the run.

Epochs: by default one pass over the training patches (every target slice of every training case,
remainder dropped so each process runs the same number of full batches); ``steps_per_epoch`` fixes the
number of batches instead (drawn from successive shuffles of the patches).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Sampler

from model_export.checkpoint import read_checkpoint, save_checkpoint
from model_export.data.grid_plan import plan_grid
from model_export.data.manifest import Case, Manifest
from model_export.data.sampling import PatchDataset, collate_patches, compute_normalization
from model_export.nets import SegmentationModel, build_model
from model_export.training import distributed as dist_utils
from model_export.training.config import TrainConfig
from model_export.training.series_validation import series_scores
from model_export.training.step import LossOptions, batch_loss
from model_export.training.validation import crop_dice
from msdn_core.card import Normalization

logger = logging.getLogger(__name__)

#: ``on_improve(epoch, module, val_dice)`` is called (on every process) when the validation Dice improves.
ImproveCallback = Callable[[int, SegmentationModel, float], None]


class EpochSampler(Sampler[int]):
    """Indices of one epoch for one process: successive seeded shuffles, split across processes.

    Args:
        size: dataset length.
        samples_per_rank: indices yielded per process and epoch.
        seed: base seed; the order of epoch ``e`` depends only on ``(seed, e)``.
        rank, world_size: this process and the number of processes.
    """

    def __init__(self, size: int, samples_per_rank: int, *, seed: int = 0, rank: int = 0, world_size: int = 1):
        if size < 1 or samples_per_rank < 1:
            raise ValueError(f"size and samples_per_rank must be positive, got {size}, {samples_per_rank}")
        self.size, self.samples_per_rank = size, samples_per_rank
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_rank

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        need = self.samples_per_rank * self.world_size
        order = np.concatenate([rng.permutation(self.size) for _ in range(math.ceil(need / self.size))])[:need]
        return iter(order[self.rank :: self.world_size].tolist())


class CompositionBatchSampler(Sampler[list[int]]):
    """Batches of a fixed number of strong and weak rows (``TrainConfig.batch_composition = "S:W"``).

    Each kind is drawn from successive seeded shuffles of its own items; when one kind has no item its
    rows are drawn from the other. Batch order of epoch ``e`` on process ``rank`` depends only on
    ``(seed, e, rank)``.

    Args:
        strong_flags: (len,) whether each dataset item is strong.
        steps: batches per epoch and process.
        strong_rows, weak_rows: rows of each kind per batch.
    """

    def __init__(
        self,
        strong_flags: np.ndarray,
        steps: int,
        strong_rows: int,
        weak_rows: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        flags = np.asarray(strong_flags, dtype=bool)
        if steps < 1 or strong_rows < 0 or weak_rows < 0 or strong_rows + weak_rows < 1 or not len(flags):
            raise ValueError("need items, steps >= 1 and at least one row per batch")
        self.strong = np.flatnonzero(flags)
        self.weak = np.flatnonzero(~flags)
        if not len(self.strong):
            self.strong = self.weak
        if not len(self.weak):
            self.weak = self.strong
        self.steps, self.rows = steps, (strong_rows, weak_rows)
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    @staticmethod
    def _stream(rng: np.random.Generator, pool: np.ndarray, n: int) -> np.ndarray:
        if n == 0:
            return pool[:0]
        reps = -(-n // len(pool))
        return np.concatenate([pool[rng.permutation(len(pool))] for _ in range(reps)])[:n]

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch, 2, self.rank])
        s, w = self.rows
        strong = self._stream(rng, self.strong, s * self.steps).reshape(self.steps, s)
        weak = self._stream(rng, self.weak, w * self.steps).reshape(self.steps, w)
        for i in range(self.steps):
            yield strong[i].tolist() + weak[i].tolist()


@dataclass
class TrainResult:
    """What a finished run produced."""

    out_dir: Path
    best_path: Path
    last_path: Path
    best_val_dice: float
    best_epoch: int
    epochs: int
    stopped_early: bool
    history: list[dict[str, Any]] = field(default_factory=list)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> cuda when available else cpu; ``cuda`` under torchrun -> this process's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("device cuda requested but no GPU is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


class Trainer:
    """Train one model of the family on strong and weak cases.

    Args:
        config: training options.
        train_cases: strong and weak training cases. Models without a Detection Unit use only the
            strong ones (paper section 3), unless ``config.box_constraints`` is set.
        val_cases: validation cases; the strong ones are used.
        classes: class names for label values 1..C.
        out_dir: where checkpoints and metrics go.
        dataset: free-form description of the data (stored in checkpoints).
        resume: continue from ``out_dir/last.pt`` when it exists.
        on_improve: called after each validation improvement (the experiment's paper-style reporting).
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        train_cases: Sequence[Case],
        val_cases: Sequence[Case],
        classes: Sequence[str],
        out_dir: str | os.PathLike,
        dataset: dict[str, Any] | None = None,
        resume: bool = False,
        on_improve: ImproveCallback | None = None,
    ):
        self.config = config
        self.classes = list(classes)
        self.out_dir = Path(out_dir)
        self.dataset_info = dict(dataset or {})
        self.resume = resume
        self.on_improve = on_improve
        self.all_train_cases = list(train_cases)
        self.val_cases = [c for c in val_cases if c.strong]
        if not self.val_cases:
            raise ValueError("no strong validation case: the validation Dice drives the schedule and early stopping")
        self.num_strong = sum(c.strong for c in train_cases)
        self.num_weak = len(train_cases) - self.num_strong
        if self.num_strong == 0:
            raise ValueError("no strong training case: the segmentation net needs at least one mask")

    # -- set-up ---------------------------------------------------------------------------------------
    def _build(self) -> None:
        cfg = self.config
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        wants_cuda = cfg.device.startswith("cuda") or (cfg.device == "auto" and torch.cuda.is_available())
        self.dist = dist_utils.init_from_env(torch.device("cuda" if wants_cuda else "cpu"))
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        self.amp = bool(cfg.amp and self.device.type == "cuda")
        seed_everything(cfg.seed)
        self.module = build_model(cfg.model, preset=cfg.preset, num_classes=len(self.classes), **cfg.model_options)
        box_loss = cfg.box_constraint_loss()
        learns_from_boxes = self.module.has_detection or box_loss is not None
        self.train_cases = self.all_train_cases if learns_from_boxes else [c for c in self.all_train_cases if c.strong]
        # The model grid (msdn_core.grid), planned on the training images; written into the card.
        self.grid = plan_grid(self.train_cases, spacing=cfg.spacing, orientation=cfg.orientation)
        self.train_set = PatchDataset(
            self.train_cases,
            normalization=Normalization(),
            patch_size=cfg.patch_size,
            augment=True,
            jitter=cfg.jitter,
            flip=cfg.flip,
            noise_std=cfg.noise_std,
            noise_prob=cfg.noise_prob,
            away_fraction=cfg.away_fraction,
            hard_negative_fraction=cfg.hard_negative_fraction,
            away_cases=cfg.away_cases,
            box_mode=cfg.box_mode,
            seed=cfg.seed,
            grid=self.grid,
        )
        self.anchor_info: dict[str, Any] = {}
        if self.module.has_detection:
            self._fit_anchors()
        self.module = self.module.to(self.device)
        self.normalization = compute_normalization([v.image for v in self.train_set.volumes], clip=cfg.clip)
        self.train_set.normalization = self.normalization
        self.val_set = PatchDataset(
            self.val_cases, normalization=self.normalization, patch_size=cfg.patch_size, augment=False, grid=self.grid
        )
        self.loss_options = LossOptions(
            det_weight=cfg.det_loss_weight,
            det_on_strong=cfg.det_on_strong,
            dice_foreground_only=cfg.dice_foreground_only,
            seg_ce_weight=cfg.seg_ce_weight,
            box_constraints=box_loss,
        )
        world = self.dist.world_size
        steps = cfg.steps_per_epoch or max(1, len(self.train_set) // (cfg.batch_size * world))
        self.steps_per_epoch = steps
        composition = cfg.composition()
        loader_args: dict[str, Any] = {
            "collate_fn": collate_patches,
            "num_workers": cfg.num_workers,
            "pin_memory": self.device.type == "cuda",
        }
        if composition is None:
            self.sampler = EpochSampler(
                len(self.train_set), steps * cfg.batch_size, seed=cfg.seed, rank=self.dist.rank, world_size=world
            )
            self.loader = DataLoader(
                self.train_set, batch_size=cfg.batch_size, sampler=self.sampler, drop_last=True, **loader_args
            )
        else:
            self.sampler = CompositionBatchSampler(
                self.train_set.strong_flags,
                steps,
                *composition,
                seed=cfg.seed,
                rank=self.dist.rank,
                world_size=world,
            )
            self.loader = DataLoader(self.train_set, batch_sampler=self.sampler, **loader_args)
        self.model: torch.nn.Module = self.module
        if self.dist.enabled:
            self.model = DistributedDataParallel(
                self.module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=self.module.has_detection,
            )
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            self.optimizer, mode="max", factor=cfg.lr_factor, patience=cfg.lr_patience
        )
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.start_epoch = 0
        self.best = -math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        logger.info(
            "training %s (%s preset, %d parameters) on %d strong + %d weak cases (%d used, %d patches), "
            "%d validation cases, %d steps/epoch, device %s%s, %d process(es)",
            cfg.model,
            cfg.preset,
            sum(p.numel() for p in self.module.parameters()),
            self.num_strong,
            self.num_weak,
            len(self.train_cases),
            len(self.train_set),
            len(self.val_cases),
            steps,
            self.device,
            " (mixed precision)" if self.amp else "",
            world,
        )

    def training_boxes(self) -> np.ndarray:
        """(N, 4) every per-slice target box of the training cases (slice pixel frame)."""
        boxes = [b for v in self.train_set.volumes for b, _ in v.targets.values()]
        return np.concatenate(boxes).reshape(-1, 4) if boxes else np.zeros((0, 4), np.float32)

    def _fit_anchors(self) -> None:
        """Anchor recall of the preset anchors, and with ``fit_anchors`` the fitted ones (rebuilds the model)."""
        from model_export.detection.anchor_fit import anchor_recall, fit_anchor_shapes

        cfg = self.config
        boxes = self.training_boxes()
        if not len(boxes):
            return
        du = self.module.det_unit
        self.anchor_info = {
            "training_boxes": int(len(boxes)),
            "recall_preset": anchor_recall(boxes, strides=du.strides, cell_anchors=du.level_cells),
        }
        if not cfg.fit_anchors:
            self.anchor_info["recall"] = self.anchor_info["recall_preset"]
            return
        strides = self.module.config.detection_strides
        shapes = [list(level) for level in fit_anchor_shapes(boxes, strides=strides, per_level=cfg.anchors_per_level)]
        seed_everything(cfg.seed)
        self.module = build_model(
            cfg.model,
            preset=cfg.preset,
            num_classes=len(self.classes),
            **{**cfg.model_options, "anchor_shapes": shapes},
        )
        du = self.module.det_unit
        self.anchor_info["recall"] = anchor_recall(boxes, strides=du.strides, cell_anchors=du.level_cells)
        self.anchor_info["anchor_shapes"] = [[list(a) for a in level] for level in du.anchor_shapes]
        logger.info(
            "anchors fitted to %d training boxes: recall at IoU 0.5 %.3f (preset anchors %.3f)",
            len(boxes),
            self.anchor_info["recall"],
            self.anchor_info["recall_preset"],
        )

    @property
    def best_path(self) -> Path:
        return self.out_dir / "best.pt"

    @property
    def last_path(self) -> Path:
        return self.out_dir / "last.pt"

    def _training_info(self, epoch: int) -> dict[str, Any]:
        return {
            **self.config.to_dict(),
            "dataset": self.dataset_info,
            "strong_cases": self.num_strong,
            "weak_cases": self.num_weak,
            "cases_used": len(self.train_cases),
            "epoch": epoch,
            "steps_per_epoch": self.steps_per_epoch,
            "world_size": self.dist.world_size,
            "anchors": self.anchor_info,
            "selection_metric": "val_score" if self.config.selection == "series" else "val_dice",
        }

    def _save(self, path: Path, epoch: int, val_dice: float, *, with_state: bool) -> None:
        state = None
        if with_state:
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "epoch": epoch,
                "best": self.best,
                "best_epoch": self.best_epoch,
                "bad_epochs": self.bad_epochs,
                "torch_rng": torch.get_rng_state(),
                "resume_key": json.dumps(self.config.resume_key(), sort_keys=True),
            }
        save_checkpoint(
            path,
            self.module,
            classes=self.classes,
            normalization=self.normalization.to_dict(),
            patch_size=(self.config.patch_size, self.config.patch_size),
            grid=self.grid,
            training=self._training_info(epoch),
            validation_dice=val_dice,
            optimizer_state=state,
            extra={"history": self.history, "best_epoch": self.best_epoch},
        )

    def _load_resume(self) -> None:
        payload = read_checkpoint(self.last_path)
        state = payload.get("optimizer_state")
        if not state:
            raise ValueError(f"{self.last_path} holds no training state to resume from")
        key = json.dumps(self.config.resume_key(), sort_keys=True)
        if state.get("resume_key") != key:
            raise ValueError(
                f"cannot resume from {self.last_path}: it was trained with different options "
                f"({state.get('resume_key')} vs {key})"
            )
        self.module.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.start_epoch = int(state["epoch"]) + 1
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])
        self.bad_epochs = int(state["bad_epochs"])
        torch.set_rng_state(state["torch_rng"])
        self.history = list(payload.get("extra", {}).get("history", []))
        logger.info(
            "resumed from %s at epoch %d (best validation Dice %.4f)", self.last_path, self.start_epoch, self.best
        )

    # -- loop -----------------------------------------------------------------------------------------
    def _progress(self, epoch: int):
        show = self.config.progress and self.dist.is_main and sys.stderr.isatty()
        if not show:
            return None
        from tqdm import tqdm

        return tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.module.train()
        self.train_set.set_epoch(epoch)
        self.sampler.set_epoch(epoch)
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        skipped = 0
        mask_rows = 0  # rows that reached the segmentation loss (mask presentations)
        bar = self._progress(epoch)
        for batch in self.loader:
            losses = batch_loss(
                self.model,
                self.module,
                batch,
                self.device,
                amp=self.amp,
                distributed=self.dist.enabled,
                options=self.loss_options,
                epoch=epoch,
            )
            if bar is not None:
                bar.update(1)
            if losses is None:
                skipped += 1
                continue
            mask_rows += int(batch["strong"].sum())
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(losses["total"]).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            for k, v in losses.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
                counts[k] = counts.get(k, 0) + 1
            if bar is not None:
                bar.set_postfix(loss=f"{sums['total'] / counts['total']:.4f}")
        if bar is not None:
            bar.close()
        keys = sorted(sums)
        if self.dist.enabled:  # average over processes, each part over the steps that had it
            t = torch.tensor([[sums[k], counts[k]] for k in keys] or [[0.0, 0.0]], dtype=torch.float64)
            t = dist_utils.all_reduce_sum(t.to(self.device), self.dist).cpu()
            if keys:
                sums = {k: float(t[i, 0]) for i, k in enumerate(keys)}
                counts = {k: int(t[i, 1]) for i, k in enumerate(keys)}
        row = {f"loss_{k}": sums[k] / max(counts[k], 1) for k in keys}
        row["skipped_batches"] = skipped
        row["mask_rows"] = mask_rows * self.dist.world_size
        return row

    def _write_metrics(self) -> None:
        if not self.dist.is_main:
            return
        (self.out_dir / "metrics.json").write_text(json.dumps(self.history, indent=1))
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        with open(self.out_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.history)

    def fit(self) -> TrainResult:
        """Train until early stopping or ``max_epochs``; returns where the results are."""
        cfg = self.config
        self._build()
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "train_config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        if self.resume and self.last_path.is_file():
            self._load_resume()
        dist_utils.barrier(self.dist)
        stopped = False
        t_start = time.perf_counter()
        epoch = self.start_epoch - 1
        if self.bad_epochs >= cfg.early_stop:
            stopped = True
        for epoch in range(self.start_epoch, cfg.max_epochs):
            if stopped:
                break
            t0 = time.perf_counter()
            row: dict[str, Any] = {"epoch": epoch, "lr": self.optimizer.param_groups[0]["lr"]}
            row.update(self._train_epoch(epoch))
            dist_utils.sync_buffers(self.module, self.dist)
            val = crop_dice(
                self.module,
                self.val_set,
                device=self.device,
                batch_size=cfg.val_batch_size,
                amp=self.amp,
                dist_info=self.dist,
            )
            row["val_dice"] = val["dice"]
            for name, v in zip(self.classes, val["per_class"], strict=True):
                row[f"val_dice_{name}"] = v
            metric = val["dice"]
            if cfg.selection == "series":
                series = series_scores(
                    self.module,
                    self.val_set.volumes,
                    self.normalization,
                    device=self.device,
                    max_fg_slices=cfg.val_max_fg_slices,
                    negative_slices=cfg.val_negative_slices,
                    fp_penalty=cfg.val_fp_penalty,
                    amp=self.amp,
                )
                row["val_series_dice"] = series["dice"]
                row["val_fp_per_case"] = series["fp_per_case"]
                row["val_score"] = series["score"]
                metric = series["score"]
            self.scheduler.step(metric)
            improved = metric > self.best + cfg.min_delta
            if improved:
                self.best, self.best_epoch, self.bad_epochs = metric, epoch, 0
            else:
                self.bad_epochs += 1
            row["improved"] = improved
            row["seconds"] = round(time.perf_counter() - t0, 3)
            self.history.append(row)
            if self.dist.is_main:
                if improved:
                    self._save(self.best_path, epoch, val["dice"], with_state=False)
                self._save(self.last_path, epoch, val["dice"], with_state=True)
                self._write_metrics()
                logger.info(
                    "epoch %d: loss %.4f, validation Dice %.4f%s (best %.4f at epoch %d), lr %.2e, %.1f s",
                    epoch,
                    row.get("loss_total", math.nan),
                    val["dice"],
                    (
                        f", whole-series Dice {row['val_series_dice']:.4f}, FP/case {row['val_fp_per_case']:.2f}, "
                        f"score {row['val_score']:.4f}"
                        if "val_score" in row
                        else ""
                    ),
                    self.best,
                    self.best_epoch,
                    row["lr"],
                    row["seconds"],
                )
            if improved and self.on_improve is not None:
                self.on_improve(epoch, self.module, val["dice"])
            dist_utils.barrier(self.dist)
            if self.bad_epochs >= cfg.early_stop:
                logger.info("early stop: no validation improvement for %d epochs", self.bad_epochs)
                stopped = True
                break
            if cfg.time_limit_minutes is not None and time.perf_counter() - t_start > 60 * cfg.time_limit_minutes:
                logger.info("time limit of %.1f minutes reached after epoch %d", cfg.time_limit_minutes, epoch)
                break
        return TrainResult(
            out_dir=self.out_dir,
            best_path=self.best_path,
            last_path=self.last_path,
            best_val_dice=self.best,
            best_epoch=self.best_epoch,
            epochs=len(self.history),
            stopped_early=stopped,
            history=list(self.history),
        )


def train(
    config: TrainConfig,
    manifest: Manifest,
    out_dir: str | os.PathLike,
    *,
    train_cases: Sequence[Case] | None = None,
    resume: bool = False,
    on_improve: ImproveCallback | None = None,
) -> TrainResult:
    """Train on a manifest's ``train`` split (or ``train_cases``), validating on its ``val`` split."""
    cases = list(train_cases) if train_cases is not None else manifest.split("train")
    return Trainer(
        config,
        train_cases=cases,
        val_cases=manifest.split("val"),
        classes=manifest.class_names,
        out_dir=out_dir,
        dataset={"name": manifest.name, "manifest": str(manifest.path)},
        resume=resume,
        on_improve=on_improve,
    ).fit()
