"""Protocol v2: find the label-scarce splits first, then compare methods there with paired statistics.

Stages (``ExperimentConfig(protocol=2)``):

1. **Learning curve.** ``curve.method`` (U-Net) at ``curve.strong`` strong cases (the rest of the
   ``train_cases`` would be weak; U-Net ignores them) and at all-strong, ``curve.repeats`` repeats.
   For each count the gap to the all-strong model is paired by repeat seed and test case; a split is
   *scarce enough to matter* when ``gap >= curve.min_se`` standard errors of the per-repeat paired
   difference (``paired``). The scarcest ``curve.max_splits`` passing splits are selected; when none
   passes and ``curve.fallback`` is set, the one with the largest gap/SE is used (and marked so).
2. **Main rows** (``methods``, ``repeats`` each) at the scarcest selected split, then
3. **ablation rows** (``ablations.methods``, ``ablations.repeats``) at the scarcest selected split, then
4. the main rows at the other selected splits and at all-strong (arms that need weak cases skipped).

Cells already run in an earlier stage (the curve's U-Net runs are the main table's U-Net runs: the
same seed gives the same strong cases whatever the weak count) are not repeated. Every model trains
with the configured early stopping; an epoch is ``train.steps_per_epoch`` batches for every method.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from model_export.experiment.paired import PerCase, compare
from model_export.experiment.protocol import Cell, ExperimentConfig, TaskSpec

SE_UNITS = ("repeat", "pair")


@dataclass
class CurveSpec:
    """The learning-curve stage.

    Args:
        method: the model of the curve (``unet``).
        strong: strong counts to try (the all-strong count ``train_cases`` is always added).
        repeats: repeats per count.
        min_se: a split is selected when its gap to all-strong is at least this many standard errors.
        max_splits: at most this many selected splits (the scarcest passing ones).
        unit: ``repeat`` (SE of the per-repeat mean paired difference; conservative) or ``pair``.
        fallback: when nothing passes, use the split with the largest gap/SE.
        select: strong counts to use as the selected splits instead of the gap rule (e.g. the splits a
            CPU run selected, for a re-run at another size); the curve is still run and reported.
    """

    method: str = "unet"
    strong: list[int] = field(default_factory=list)
    repeats: int = 5
    min_se: float = 3.0
    max_splits: int = 2
    unit: str = "repeat"
    fallback: bool = True
    select: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.strong or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in self.strong):
            raise ValueError(f"curve.strong must be positive integers, got {self.strong!r}")
        if not isinstance(self.repeats, int) or self.repeats < 2:
            raise ValueError(f"curve.repeats must be an integer >= 2 (a paired SE needs two), got {self.repeats!r}")
        if not self.min_se > 0:
            raise ValueError(f"curve.min_se must be > 0, got {self.min_se!r}")
        if not isinstance(self.max_splits, int) or self.max_splits < 1:
            raise ValueError(f"curve.max_splits must be a positive integer, got {self.max_splits!r}")
        if any(s not in self.strong for s in self.select):
            raise ValueError(f"curve.select must be a subset of curve.strong, got {self.select!r}")
        if self.unit not in SE_UNITS:
            raise ValueError(f"curve.unit must be one of {SE_UNITS}, got {self.unit!r}")

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> CurveSpec:
        if not data:
            raise ValueError("protocol 2 needs a 'curve' section")
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown curve options: {sorted(unknown)}")
        return cls(**data)


@dataclass
class AblationSpec:
    """Ablation rows run at the scarcest selected split only.

    Args:
        methods: arms or models, in priority order.
        repeats: repeats of each.
        order: ``method`` (all repeats of the first ablation, then the next: a budget cut leaves
            complete rows) or ``repeat`` (repeat-major: a cut leaves every row with fewer repeats).
    """

    methods: list[str] = field(default_factory=list)
    repeats: int = 4
    order: str = "method"

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> AblationSpec:
        data = data or {}
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown ablation options: {sorted(unknown)}")
        spec = cls(**data)
        if not isinstance(spec.repeats, int) or spec.repeats < 1:
            raise ValueError(f"ablations.repeats must be a positive integer, got {spec.repeats!r}")
        if spec.order not in ("method", "repeat"):
            raise ValueError(f"ablations.order must be 'method' or 'repeat', got {spec.order!r}")
        return spec


def check_config(config: ExperimentConfig) -> tuple[CurveSpec, AblationSpec]:
    """Validate the protocol-2 parts of ``config``."""
    curve = CurveSpec.from_dict(config.curve)
    abl = AblationSpec.from_dict(config.ablations)
    from model_export.training.config import TrainConfig

    for name in dict.fromkeys([curve.method, *config.methods, *abl.methods]):
        arm = config.arm(name)
        try:
            TrainConfig.from_dict({**arm.train_options(config.train), "model": arm.model, "seed": 0})
        except (TypeError, ValueError) as exc:
            raise ValueError(f"arm {name}: invalid training options: {exc}") from None
    if config.arm(curve.method).uses_weak:
        raise ValueError("curve.method must be a model trained on the strong cases only (e.g. unet)")
    for task in config.tasks:
        if task.train_cases is None:
            raise ValueError(f"task {task.name}: protocol 2 needs train_cases (the size of the training pool)")
        if max(curve.strong) > task.train_cases:
            raise ValueError(f"task {task.name}: curve.strong exceeds train_cases {task.train_cases}")
    return curve, abl


def curve_splits(task: TaskSpec, curve: CurveSpec) -> list[tuple[int, int]]:
    """(strong, weak) splits of the learning curve, all-strong first, then from the scarcest."""
    total = int(task.train_cases or 0)
    counts = sorted({s for s in curve.strong if s < total})
    return [(total, 0)] + [(s, total - s) for s in counts]


def curve_cells(config: ExperimentConfig) -> list[Cell]:
    """Stage 1's runs, repeat-major."""
    curve, _ = check_config(config)
    cells = []
    for r in range(curve.repeats):
        for task in config.tasks:
            for strong, weak in curve_splits(task, curve):
                cells.append(Cell(task.name, curve.method, strong, weak, r, config.seed + r))
    return cells


def curve_analysis(
    index: dict[tuple[str, str, int, int], dict[int, PerCase]], task: TaskSpec, curve: CurveSpec
) -> list[dict[str, Any]]:
    """Per curve split: repeats, mean Dice, gap to all-strong (paired), its SEs, gap/SE and whether it passes.

    Dice values in percent. Splits without runs are left out.
    """
    total = int(task.train_cases or 0)
    ref = index.get((task.name, curve.method, total, 0), {})
    out = []
    for strong, weak in curve_splits(task, curve):
        runs = index.get((task.name, curve.method, strong, weak), {})
        if not runs:
            continue
        means = [sum(pc.values()) / len(pc) for pc in runs.values() if pc]
        row: dict[str, Any] = {
            "task": task.name,
            "strong": strong,
            "weak": weak,
            "repeats": len(means),
            "mean_dice_pct": 100 * sum(means) / len(means) if means else math.nan,
            "gap_pct": math.nan,
            "se_repeat_pct": math.nan,
            "se_pair_pct": math.nan,
            "gap_over_se": math.nan,
            "passes": False,
        }
        if strong < total and ref:
            res = compare(ref, runs)
            if res is not None:
                rep, pair = res["repeats"], res["pairs"]
                se = rep.se if curve.unit == "repeat" else pair.se
                row.update(
                    gap_pct=100 * rep.mean,
                    se_repeat_pct=100 * rep.se,
                    se_pair_pct=100 * pair.se,
                    gap_over_se=rep.mean / se if se and math.isfinite(se) and se > 0 else math.nan,
                )
                row["passes"] = bool(math.isfinite(row["gap_over_se"]) and row["gap_over_se"] >= curve.min_se)
        out.append(row)
    return out


def select_splits(analysis: list[dict[str, Any]], curve: CurveSpec) -> dict[str, Any]:
    """The selected scarce splits of one task (scarcest first) from ``curve_analysis`` rows.

    Returns:
        ``{"splits": [(strong, weak), ...], "fallback": bool, "forced": bool}``.
    """
    if curve.select:
        forced = sorted((r for r in analysis if r["strong"] in curve.select), key=lambda r: r["strong"])
        return {"splits": [(r["strong"], r["weak"]) for r in forced], "fallback": False, "forced": True}
    passing = sorted((r for r in analysis if r["passes"]), key=lambda r: r["strong"])
    chosen = passing[: curve.max_splits]
    fallback = False
    if not chosen and curve.fallback:
        cands = [r for r in analysis if math.isfinite(r["gap_over_se"])]
        if cands:
            chosen = [max(cands, key=lambda r: r["gap_over_se"])]
            fallback = True
    return {"splits": [(r["strong"], r["weak"]) for r in chosen], "fallback": fallback, "forced": False}


def main_cells(
    config: ExperimentConfig, selection: dict[str, dict[str, Any]], *, done: set | None = None
) -> list[Cell]:
    """Stages 2-4 in priority order (see module docstring), without cells already in ``done`` (keys)."""
    _, abl = check_config(config)
    done = set(done or ())
    cells: list[Cell] = []
    seen: set = set()

    def add(task: str, methods, splits, repeats: int) -> None:
        for r in range(repeats):
            for strong, weak in splits:
                for m in methods:
                    if weak == 0 and config.arm(m).uses_weak and not config.mixed_without_weak:
                        continue
                    cell = Cell(task, m, strong, weak, r, config.seed + r)
                    if cell.key in done or cell.key in seen:
                        continue
                    seen.add(cell.key)
                    cells.append(cell)

    for task in config.tasks:
        splits = [tuple(s) for s in selection.get(task.name, {}).get("splits", [])]
        if not splits:
            continue
        scarcest = [min(splits)]
        add(task.name, config.methods, scarcest, config.repeats)
        if abl.order == "method":
            for m in abl.methods:
                add(task.name, [m], scarcest, abl.repeats)
        else:
            add(task.name, abl.methods, scarcest, abl.repeats)
        others = [s for s in splits if s != scarcest[0]] + [(int(task.train_cases or 0), 0)]
        add(task.name, config.methods, others, config.repeats)
    return cells


def selection_to_dict(selection: dict[str, dict[str, Any]], analysis: dict[str, list]) -> dict[str, Any]:
    return {
        "selection": {
            k: {"splits": [list(s) for s in v["splits"]], "fallback": v["fallback"], "forced": v.get("forced", False)}
            for k, v in selection.items()
        },
        "curve": analysis,
    }


__all__ = [
    "AblationSpec",
    "CurveSpec",
    "check_config",
    "curve_analysis",
    "curve_cells",
    "curve_splits",
    "main_cells",
    "select_splits",
    "selection_to_dict",
]
