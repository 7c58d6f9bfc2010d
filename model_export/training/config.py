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
        batch_composition: ``proportional`` (paper: batches drawn from the shuffled mix of strong and
            weak patches) or ``"S:W"`` (e.g. ``"2:2"``): every batch holds S strong and W weak rows
            (S + W must equal ``batch_size``; a missing kind is filled with the other).
        hard_negative_fraction: fraction of patches replaced by hard negatives (target-like structures
            away from every target; ``model_export.data.sampling``).
        away_cases: ``same`` (away patches from the item's own case) or ``all`` (from any case of the
            same kind, target-free cases included).
        box_mode: ``component`` (a box per 2D connected component) or ``object`` (one box per 3D
            object, projected to each slice).
        spacing: the model grid's voxel size (``msdn_core.grid``): ``"auto"`` (the median in-plane
            voxel size of the training images, ``model_export.data.grid_plan``), [sy, sx] or
            [sz, sy, sx] mm, or None (every image on its own grid, as before the model grid).
        orientation: the model grid's axes as LPS letters (``"LPS"``), or None (as stored).
        dice_foreground_only: Dice over the foreground classes only, batch-pooled (paper: background
            counted too).
        det_loss_weight: weight of the detection loss in the total (paper: 1).
        seg_ce_weight: weight of a pixel-wise cross-entropy added to the segmentation Dice (paper: 0,
            Dice only; nnU-Net: Dice + CE).
        det_on_strong: strong rows also get the detection loss (paper 2.2: False, only weak rows).
        box_constraints: None (default: a segmentation-only model ignores the weak rows) or the options
            of ``model_export.box_constraints.BoxConstraintLoss`` (``{}`` for its defaults): a
            segmentation-only model then trains on the weak rows too, with the box emptiness /
            tightness / size constraints of Kervadec et al. 2020 (the strong rows keep the Dice loss).
        fit_anchors: fit the anchor shapes to the training boxes (k-means, ``anchors_per_level`` per
            detection level) instead of the preset's factor/scales/ratios; the result is stored in the
            architecture (``anchor_shapes``) with the anchor recall in the training record.
        anchors_per_level: anchors A per level when ``fit_anchors``.
        selection: what drives the schedule, early stopping and ``best.pt``: ``crop`` (mean Dice on
            target-centred validation crops, paper) or ``series`` (whole-series score,
            ``model_export.training.series_validation``).
        time_limit_minutes: stop after the epoch that passes this much training time in this process
            (None: no limit); ``--resume`` continues such a run.
        val_max_fg_slices, val_negative_slices, val_fp_penalty: the whole-series validation's slice
            sampling and false-positive penalty (computed and logged whenever ``selection`` is
            ``series``).
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
    batch_composition: str = "proportional"
    hard_negative_fraction: float = 0.0
    away_cases: str = "same"
    box_mode: str = "component"
    #: The model grid (``msdn_core.grid``): ``"auto"`` (the median in-plane voxel size of the training
    #: images, as nnU-Net's plans), [sy, sx] / [sz, sy, sx] mm, or None (each image on its own grid).
    spacing: str | tuple[float, ...] | None = None
    #: LPS letters of the model grid's x, y, z axes (``"LPS"``: the DICOM axial view), or None.
    orientation: str | None = None
    dice_foreground_only: bool = False
    det_loss_weight: float = 1.0
    seg_ce_weight: float = 0.0
    det_on_strong: bool = True
    box_constraints: dict[str, Any] | None = None
    fit_anchors: bool = False
    anchors_per_level: int = 3
    selection: str = "crop"
    val_max_fg_slices: int = 32
    val_negative_slices: int = 8
    val_fp_penalty: float = 0.02
    time_limit_minutes: float | None = None

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
        self.composition()  # validates batch_composition
        for name in ("away_fraction", "hard_negative_fraction"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and 0 <= v <= 1):
                raise ValueError(f"{name} must be in [0, 1], got {v!r}")
        if self.away_fraction + self.hard_negative_fraction > 1:
            raise ValueError("away_fraction + hard_negative_fraction must be <= 1")
        for name, allowed in (
            ("away_cases", ("same", "all")),
            ("box_mode", ("component", "object")),
            ("selection", ("crop", "series")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not (isinstance(self.det_loss_weight, (int, float)) and self.det_loss_weight >= 0):
            raise ValueError(f"det_loss_weight must be >= 0, got {self.det_loss_weight!r}")
        if not (isinstance(self.seg_ce_weight, (int, float)) and self.seg_ce_weight >= 0):
            raise ValueError(f"seg_ce_weight must be >= 0, got {self.seg_ce_weight!r}")
        if self.box_constraints is not None:
            self.box_constraint_loss()  # validates the options
        for name in ("anchors_per_level", "val_max_fg_slices"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive integer, got {v!r}")
        if (
            isinstance(self.val_negative_slices, bool)
            or not isinstance(self.val_negative_slices, int)
            or (self.val_negative_slices < 0)
        ):
            raise ValueError(f"val_negative_slices must be an integer >= 0, got {self.val_negative_slices!r}")
        if not (isinstance(self.val_fp_penalty, (int, float)) and self.val_fp_penalty >= 0):
            raise ValueError(f"val_fp_penalty must be >= 0, got {self.val_fp_penalty!r}")
        if self.time_limit_minutes is not None and not (
            isinstance(self.time_limit_minutes, (int, float)) and self.time_limit_minutes > 0
        ):
            raise ValueError(f"time_limit_minutes must be > 0 or None, got {self.time_limit_minutes!r}")
        if self.spacing is not None and self.spacing != "auto":
            from msdn_core.grid import check_spacing

            self.spacing = check_spacing(
                self.spacing if not isinstance(self.spacing, (int, float)) else [self.spacing] * 2
            )
        if self.orientation is not None:
            from msdn_core.grid import check_orientation

            self.orientation = check_orientation(self.orientation)
        if self.clip is not None:
            clip = tuple(float(v) for v in self.clip)
            if len(clip) != 2 or clip[0] >= clip[1]:
                raise ValueError(f"clip must be (low, high) with low < high, got {self.clip!r}")
            self.clip = clip

    def composition(self) -> tuple[int, int] | None:
        """``(strong, weak)`` rows per batch, or None for ``proportional``."""
        text = self.batch_composition
        if text == "proportional":
            return None
        parts = str(text).split(":")
        if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
            raise ValueError(f"batch_composition must be 'proportional' or 'S:W' (e.g. '2:2'), got {text!r}")
        s, w = (int(p) for p in parts)
        if s + w != self.batch_size:
            raise ValueError(f"batch_composition {text!r}: S + W must equal batch_size {self.batch_size}")
        return s, w

    def box_constraint_loss(self):
        """The ``BoxConstraintLoss`` of ``box_constraints`` (None when unset).

        Raises:
            ValueError: ``box_constraints`` is not a dict of valid options, or the model detects
                (MSDN and MS-Net learn from boxes through their Detection Unit).
        """
        if self.box_constraints is None:
            return None
        from model_export.box_constraints import BoxConstraintLoss

        if not isinstance(self.box_constraints, dict):
            raise ValueError(f"box_constraints must be None or a dict of options, got {self.box_constraints!r}")
        if self.model in ("msdn", "ms_net"):
            raise ValueError(f"box_constraints applies to segmentation-only models, not {self.model!r}")
        try:
            return BoxConstraintLoss(**self.box_constraints)
        except TypeError as exc:
            raise ValueError(f"box_constraints: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict."""
        d = asdict(self)
        d["clip"] = None if self.clip is None else list(self.clip)
        if isinstance(self.spacing, tuple):
            d["spacing"] = list(self.spacing)
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
        keep = (
            "model",
            "preset",
            "model_options",
            "patch_size",
            "batch_size",
            "seed",
            "clip",
            "away_fraction",
            "batch_composition",
            "hard_negative_fraction",
            "away_cases",
            "box_mode",
            "dice_foreground_only",
            "det_loss_weight",
            "seg_ce_weight",
            "det_on_strong",
            "box_constraints",
            "fit_anchors",
            "anchors_per_level",
            "selection",
            "spacing",
            "orientation",
        )
        # options added after the first release count only when changed, so older runs stay resumable
        newer = set(keep[keep.index("batch_composition") :])
        defaults = TrainConfig().to_dict()
        return {k: v for k, v in self.to_dict().items() if k in keep and (k not in newer or v != defaults[k])}
