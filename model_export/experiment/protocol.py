"""What an experiment runs: tasks with their strong-weak splits, methods, repeats, training options.

Paper (section 3, Table 1): lung nodules with 160 training cases split strong-weak 160-0, 120-40,
100-60, 80-80, 60-100; cochlea with 66: 66-0, 44-22, 33-33, 22-44, 11-55; five methods; 3 repeats.
U-Net, U-Net+sSE and MSDN- use only the strong cases; Variant MS-Net and MSDN are not run without
weak cases (the paper's "-").

For repeat ``r`` the training cases are shuffled with seed ``seed + r``: the first ``strong`` become
the strong cases, the next ``weak`` are turned into weak cases (``Case.as_weak``: boxes from the
masks). Every method sees the same cases within a repeat.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from model_export.data.manifest import Case
from model_export.nets.config import MODEL_NAMES

METHODS: tuple[str, ...] = ("unet", "unet_sse", "ms_net", "msdn_minus", "msdn")
#: Methods that learn from boxes (need weak cases).
MIXED_METHODS: tuple[str, ...] = ("ms_net", "msdn")
METHOD_LABELS = {
    "unet": "U-Net",
    "unet_sse": "U-Net+Unary sSE",
    "ms_net": "Variant MS-Net",
    "msdn_minus": "MSDN-",
    "msdn": "MSDN",
}
REPORTS = ("val", "paper")
PROTOCOLS = (1, 2)
PSEUDO_KINDS = ("box", "refined")


@dataclass(frozen=True)
class Arm:
    """A row of the results table: a model, training-option overrides and optional pseudo-masks.

    Args:
        name: the row's name (``methods`` entries name arms or plain models).
        model: one of ``MODEL_NAMES``.
        train: ``TrainConfig`` overrides for this arm (on top of ``ExperimentConfig.train``).
        pseudo: None, or ``box`` / ``refined``: the weak cases get pseudo-masks from their boxes and are
            used as strong cases (``model_export.experiment.pseudo``).
        label: table label (default: the model's label, or the name).
    """

    name: str
    model: str
    train: dict[str, Any] = field(default_factory=dict)
    pseudo: str | None = None
    label: str = ""

    def __post_init__(self) -> None:
        if self.model not in MODEL_NAMES:
            raise ValueError(f"arm {self.name}: model must be one of {MODEL_NAMES}, got {self.model!r}")
        if self.pseudo is not None and self.pseudo not in PSEUDO_KINDS:
            raise ValueError(f"arm {self.name}: pseudo must be None or one of {PSEUDO_KINDS}, got {self.pseudo!r}")
        if not isinstance(self.train, dict) or {"model", "seed"} & set(self.train):
            raise ValueError(f"arm {self.name}: train must be a dict of options other than 'model' and 'seed'")

    def train_options(self, base: dict[str, Any]) -> dict[str, Any]:
        """``base`` training options with this arm's overrides (``model_options`` merged key by key)."""
        merged = {**base, **self.train}
        if "model_options" in self.train:
            merged["model_options"] = {**base.get("model_options", {}), **self.train["model_options"]}
        return merged

    @property
    def uses_weak(self) -> bool:
        """Whether the arm learns from the weak cases (so it is not run at splits without any).

        True for the mixed models, pseudo-mask arms and arms with a box constraint loss
        (``train.box_constraints``).
        """
        return self.model in MIXED_METHODS or self.pseudo is not None or self.train.get("box_constraints") is not None

    @property
    def display(self) -> str:
        return self.label or METHOD_LABELS.get(self.name, self.name)


@dataclass
class TaskSpec:
    """One data set and its strong-weak splits.

    Args:
        name: task name (``lung``, ``cochlea``...).
        manifest: path of the manifest (its train/val/test splits are used).
        splits: (strong, weak) training case counts.
        train_cases, val_cases, test_cases: use only the first N cases of each split (None = all).
    """

    name: str
    manifest: str = ""
    splits: list[tuple[int, int]] = field(default_factory=list)
    train_cases: int | None = None
    val_cases: int | None = None
    test_cases: int | None = None

    def __post_init__(self) -> None:
        self.splits = [tuple(int(v) for v in s) for s in self.splits]  # type: ignore[misc]
        if not self.splits or any(len(s) != 2 or s[0] < 1 or s[1] < 0 for s in self.splits):
            raise ValueError(f"task {self.name}: splits must be (strong >= 1, weak >= 0) pairs, got {self.splits!r}")


#: The paper's splits.
PAPER_TASKS: dict[str, list[tuple[int, int]]] = {
    "lung": [(160, 0), (120, 40), (100, 60), (80, 80), (60, 100)],
    "cochlea": [(66, 0), (44, 22), (33, 33), (22, 44), (11, 55)],
}


def scaled_splits(paper: Sequence[tuple[int, int]], total: int) -> list[tuple[int, int]]:
    """The paper's strong fractions applied to ``total`` training cases (at least one strong)."""
    full = sum(paper[0])
    out = []
    for strong, _ in paper:
        s = max(1, round(strong * total / full))
        out.append((s, total - s))
    return out


@dataclass
class ExperimentConfig:
    """A whole experiment.

    Args:
        tasks: the data sets and splits.
        methods: models to compare (``METHODS`` order is kept in reports).
        repeats: runs per cell (different case assignment and seeds).
        seed: base seed; repeat ``r`` uses ``seed + r``.
        train: ``TrainConfig`` options shared by all runs (``model`` and ``seed`` are set per cell).
        report: ``val`` - test the checkpoint with the best validation Dice (default); ``paper`` - also
            evaluate the test set whenever validation improves and report the best test Dice seen
            (the paper's reporting, optimistic).
        region, margin, z_margin: test evaluation (see ``model_export.evaluation``).
        mixed_without_weak: also run MS-Net and MSDN at splits without weak cases.
        jobs: runs in parallel (processes).
        description: free text copied into the report.
        arms: named rows beyond the plain models: ``{name: {"model", "train", "pseudo", "label"}}``
            (see ``Arm``); ``methods`` may name them.
        protocol: 1 - the grid ``tasks x splits x methods x repeats``; 2 - the staged protocol of
            ``model_export.experiment.v2`` (learning curve, split selection, main rows, ablations).
        curve: protocol 2's learning-curve stage (``v2.CurveSpec`` fields).
        ablations: protocol 2's ablation rows (``v2.AblationSpec`` fields).
    """

    tasks: list[TaskSpec]
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    repeats: int = 3
    seed: int = 0
    train: dict[str, Any] = field(default_factory=dict)
    report: str = "val"
    region: str = "target"
    margin: int = 8
    z_margin: int = 2
    mixed_without_weak: bool = False
    jobs: int = 1
    description: str = ""
    arms: dict[str, dict[str, Any]] = field(default_factory=dict)
    protocol: int = 1
    curve: dict[str, Any] | None = None
    ablations: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        self.tasks = [t if isinstance(t, TaskSpec) else TaskSpec(**t) for t in self.tasks]
        if not self.tasks:
            raise ValueError("tasks must not be empty")
        for name, spec in self.arms.items():
            if name in MODEL_NAMES:
                raise ValueError(f"arm name {name!r} is a model name; pick another")
            if not isinstance(spec, dict) or "model" not in spec:
                raise ValueError(f"arm {name!r} needs a dict with at least 'model'")
            Arm(name=name, **spec)
        known = set(MODEL_NAMES) | set(self.arms)
        bad = [m for m in self.methods if m not in known]
        if bad or not self.methods:
            raise ValueError(f"methods must be a non-empty subset of {sorted(known)}, got {self.methods!r}")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if not isinstance(self.repeats, int) or self.repeats < 1:
            raise ValueError(f"repeats must be a positive integer, got {self.repeats!r}")
        if self.report not in REPORTS:
            raise ValueError(f"report must be one of {REPORTS}, got {self.report!r}")
        if not isinstance(self.jobs, int) or self.jobs < 1:
            raise ValueError(f"jobs must be a positive integer, got {self.jobs!r}")
        if {"model", "seed"} & set(self.train):
            raise ValueError("train options must not set 'model' or 'seed' (they are set per run)")

    def arm(self, name: str) -> Arm:
        """The arm named ``name`` (a plain model name gives that model with no overrides)."""
        if name in self.arms:
            return Arm(name=name, **self.arms[name])
        if name in MODEL_NAMES:
            return Arm(name=name, model=name)
        raise ValueError(f"unknown method or arm {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ExperimentConfig:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown experiment options: {sorted(unknown)}")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> ExperimentConfig:
        """Read a JSON or YAML file holding ``to_dict`` output (relative manifests resolved against it)."""
        path = Path(path)
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        for t in data.get("tasks", []):
            if t.get("manifest") and not Path(t["manifest"]).is_absolute():
                t["manifest"] = str((path.parent / t["manifest"]).resolve())
        return cls.from_dict(data)


@dataclass(frozen=True)
class Cell:
    """One training run of the grid."""

    task: str
    method: str
    strong: int
    weak: int
    repeat: int
    seed: int

    @property
    def key(self) -> tuple[str, str, int, int, int]:
        return (self.task, self.method, self.strong, self.weak, self.repeat)

    @property
    def name(self) -> str:
        return f"{self.task}/{self.method}/{self.strong}-{self.weak}/r{self.repeat}"


def plan_cells(config: ExperimentConfig) -> list[Cell]:
    """All runs of the experiment, repeat-major so partial results cover every method early."""
    cells = []
    for repeat in range(config.repeats):
        for task in config.tasks:
            for strong, weak in task.splits:
                for method in config.methods:
                    if config.arm(method).uses_weak and weak == 0 and not config.mixed_without_weak:
                        continue
                    cells.append(Cell(task.name, method, strong, weak, repeat, config.seed + repeat))
    return cells


def assign_cases(cases: Sequence[Case], strong: int, weak: int, seed: int) -> list[Case]:
    """The training cases of one run: ``strong`` strong and ``weak`` weak, chosen by ``seed``.

    Raises:
        ValueError: fewer training cases than ``strong + weak`` or not all of them strong.
    """
    pool = [c for c in cases if c.strong]
    if len(pool) < strong + weak:
        raise ValueError(
            f"split {strong}-{weak} needs {strong + weak} strong training cases, the manifest has {len(pool)}"
        )
    order = np.random.default_rng(seed).permutation(len(pool))
    chosen = [pool[i] for i in order[: strong + weak]]
    return chosen[:strong] + [c.as_weak() for c in chosen[strong:]]
