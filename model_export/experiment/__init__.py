"""The paper's Table 1 protocol: methods x strong-weak splits x repeats -> mean test Dice with 95% CIs."""

from model_export.experiment.protocol import (
    METHODS,
    PAPER_TASKS,
    Cell,
    ExperimentConfig,
    TaskSpec,
    plan_cells,
)
from model_export.experiment.runner import run_experiment
from model_export.experiment.stats import mean_ci

__all__ = ["METHODS", "PAPER_TASKS", "Cell", "ExperimentConfig", "TaskSpec", "mean_ci", "plan_cells", "run_experiment"]
