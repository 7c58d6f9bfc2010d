"""Training options with the paper's defaults (section 3)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

from model_export.nets.config import MODEL_NAMES, PRESETS, SIZE_MULTIPLE


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in checkpoints under ``training``).

    Args:
        model: one of ``MODEL_NAMES``.
        preset: ``paper`` or ``small`` (see ``model_export.nets.PRESETS``).
        model_options: further ``NetConfig`` overrides (``base_channels``, ``dropout``...).
        patch_size: square training patch side (paper: 128); a multiple of 16.
        batch_size: mini-batch per process (paper: 4).
        lr: Adam learning rate (paper: 1e-4).
        weight_decay: Adam weight decay (paper: none).
        lr_factor: factor of the plateau schedule (paper: 0.8).
        lr_patience: epochs without validation improvement before the rate is reduced (paper: 5).
        early_stop: epochs without improvement before training stops (paper: 20).
        max_epochs: hard limit on epochs.
        steps_per_epoch: batches per epoch; None = one pass over the training patches.
        min_delta: smallest validation Dice gain counted as an improvement.
        jitter, noise_std, noise_prob, flip, away_fraction: sampling (see ``model_export.data.sampling``).
        clip: optional (low, high) intensity clip applied before normalisation (e.g. HU window).
        seed: seeds weights, sampling and augmentation.
        device: ``cpu``, ``cuda``, ``cuda:1``... (``auto`` picks cuda when available).
        amp: mixed precision (float16 autocast + gradient scaling) on cuda; ignored on cpu.
        num_workers: DataLoader worker processes.
        threads: torch CPU threads (None keeps torch's default).
        val_batch_size: batch size of the validation pass.
        progress: show a progress bar (rank 0, interactive terminals).
    """

    model: str = "msdn"
    preset: str = "paper"
    model_options: dict[str, Any] = field(default_factory=dict)
    patch_size: int = 128
    batch_size: int = 4
    lr: float = 1e-4
    weight_decay: float = 0.0
    lr_factor: float = 0.8
    lr_patience: int = 5
    early_stop: int = 20
    max_epochs: int = 200
    steps_per_epoch: int | None = None
    min_delta: float = 0.0
    jitter: float = 0.25
    noise_std: float = 0.05
    noise_prob: float = 0.5
    flip: bool = True
    away_fraction: float = 0.0
    clip: tuple[float, float] | None = None
    seed: int = 0
    device: str = "auto"
    amp: bool = True
    num_workers: int = 0
    threads: int | None = None
    val_batch_size: int = 16
    progress: bool = True

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"model must be one of {MODEL_NAMES}, got {self.model!r}")
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        if not isinstance(self.patch_size, int) or self.patch_size < SIZE_MULTIPLE or self.patch_size % SIZE_MULTIPLE:
            raise ValueError(f"patch_size must be a positive multiple of {SIZE_MULTIPLE}, got {self.patch_size!r}")
        for name in ("batch_size", "lr_patience", "early_stop", "max_epochs", "val_batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.steps_per_epoch is not None and (not isinstance(self.steps_per_epoch, int) or self.steps_per_epoch < 1):
            raise ValueError(f"steps_per_epoch must be a positive integer or None, got {self.steps_per_epoch!r}")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr!r}")
        if not 0 < self.lr_factor < 1:
            raise ValueError(f"lr_factor must be in (0, 1), got {self.lr_factor!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not isinstance(self.num_workers, int) or self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0, got {self.num_workers!r}")
        if self.threads is not None and (not isinstance(self.threads, int) or self.threads < 1):
            raise ValueError(f"threads must be a positive integer, got {self.threads!r}")
        if self.clip is not None:
            clip = tuple(float(v) for v in self.clip)
            if len(clip) != 2 or clip[0] >= clip[1]:
                raise ValueError(f"clip must be (low, high) with low < high, got {self.clip!r}")
            self.clip = clip

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        d = asdict(self)
        d["clip"] = None if self.clip is None else list(self.clip)
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of ``to_dict``; unknown keys raise ``ValueError``."""
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown training options: {sorted(unknown)}")
        return cls(**data)

    def resume_key(self) -> dict[str, Any]:
        """Options that must match for ``--resume`` to continue a run."""
        keep = ("model", "preset", "model_options", "patch_size", "batch_size", "seed", "clip", "away_fraction")
        return {k: v for k, v in self.to_dict().items() if k in keep}
