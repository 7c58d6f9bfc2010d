"""Run an experiment grid: train, test, append one CSV row per run, then write the report.

``out_dir`` layout::

    results.csv        one row per finished run (appended as runs finish; resumable)
    experiment.json    the configuration
    runs/<task>/<method>/<strong>-<weak>/r<repeat>/   best.pt, metrics.csv, ... of each run
    table.md, summary.csv, dice_vs_strong.png          the report (``report.write_report``)

Re-running with the same ``out_dir`` skips every run already in ``results.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from model_export.experiment.protocol import Cell, ExperimentConfig, TaskSpec, assign_cases, plan_cells

logger = logging.getLogger(__name__)

RESULT_FIELDS = [
    "task",
    "method",
    "strong",
    "weak",
    "repeat",
    "seed",
    "test_dice",
    "test_dice_paper",
    "test_iou",
    "test_hd95_mm",
    "val_dice",
    "best_epoch",
    "epochs",
    "seconds",
    "run_dir",
]


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a results CSV with numbers parsed (missing file: no rows)."""
    path = Path(path)
    if not path.is_file():
        return []
    rows = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            row: dict[str, Any] = dict(raw)
            for k in ("strong", "weak", "repeat", "seed", "best_epoch", "epochs"):
                row[k] = int(row[k])
            for k in ("test_dice", "test_dice_paper", "test_iou", "test_hd95_mm", "val_dice", "seconds"):
                row[k] = float(row[k]) if row.get(k) not in (None, "") else math.nan
            rows.append(row)
    return rows


def append_result(path: Path, row: dict[str, Any]) -> None:
    """Append one row (writing the header first for a new file); flushed at once."""
    new = not path.is_file()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: row.get(k, "") for k in RESULT_FIELDS})
        f.flush()
        os.fsync(f.fileno())


def run_cell(cell: Cell, task: TaskSpec, config: ExperimentConfig, run_dir: str) -> dict[str, Any]:
    """Train and test one run; returns its result row. Runs in a worker process."""
    from model_export.data.manifest import load_manifest
    from model_export.evaluation import evaluate_cases
    from model_export.training import TrainConfig
    from model_export.training.trainer import Trainer

    t0 = time.perf_counter()
    manifest = load_manifest(task.manifest, check_files=False)
    train_pool = manifest.split("train")[: task.train_cases]
    val_cases = manifest.split("val")[: task.val_cases]
    test_cases = manifest.split("test")[: task.test_cases]
    if not test_cases:
        raise ValueError(f"task {task.name}: the manifest has no test case")
    cases = assign_cases(train_pool, cell.strong, cell.weak, cell.seed)
    train_cfg = TrainConfig.from_dict({**config.train, "model": cell.method, "seed": cell.seed, "progress": False})
    eval_opts = {
        "classes": manifest.class_names,
        "region": config.region,
        "patch_size": train_cfg.patch_size,
        "margin": config.margin,
        "z_margin": config.z_margin,
    }
    paper_best = {"dice": math.nan}

    def on_improve(epoch: int, module, val_dice: float) -> None:
        if config.report != "paper":
            return
        was_training = module.training
        res = evaluate_cases(module, test_cases, trainer.normalization, device=trainer.device, **eval_opts)
        module.train(was_training)
        if not math.isfinite(paper_best["dice"]) or res.mean_dice > paper_best["dice"]:
            paper_best["dice"] = res.mean_dice

    trainer = Trainer(
        train_cfg,
        train_cases=cases,
        val_cases=val_cases,
        classes=manifest.class_names,
        out_dir=run_dir,
        dataset={"name": manifest.name, "task": task.name, "split": f"{cell.strong}-{cell.weak}"},
        resume=True,
        on_improve=on_improve,
    )
    result = trainer.fit()
    from model_export.checkpoint import load_checkpoint

    model, card, _ = load_checkpoint(result.best_path, device=trainer.device)
    res = evaluate_cases(model, test_cases, card.input.normalization, device=trainer.device, **eval_opts)
    Path(run_dir, "test_metrics.json").write_text(json.dumps(res.summary(), indent=1, default=str))
    last = Path(result.last_path)
    if last.is_file():
        last.unlink()  # optimizer state is only needed while the run is unfinished
    hd = [v for v in res.mean("hd95") if math.isfinite(v)]
    iou = [v for v in res.mean("iou") if math.isfinite(v)]
    return {
        "task": cell.task,
        "method": cell.method,
        "strong": cell.strong,
        "weak": cell.weak,
        "repeat": cell.repeat,
        "seed": cell.seed,
        "test_dice": res.mean_dice,
        "test_dice_paper": paper_best["dice"] if config.report == "paper" else "",
        "test_iou": sum(iou) / len(iou) if iou else math.nan,
        "test_hd95_mm": sum(hd) / len(hd) if hd else math.nan,
        "val_dice": result.best_val_dice,
        "best_epoch": result.best_epoch,
        "epochs": result.epochs,
        "seconds": round(time.perf_counter() - t0, 1),
        "run_dir": run_dir,
    }


def _worker_init(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)


def run_experiment(
    config: ExperimentConfig, out_dir: str | os.PathLike, *, max_runs: int | None = None, report: bool = True
) -> list[dict[str, Any]]:
    """Run every unfinished cell, appending rows to ``out_dir/results.csv``; then write the report.

    Args:
        config: the experiment.
        out_dir: results folder (resumable).
        max_runs: stop after this many new runs (None = all).
        report: write the Markdown/CSV tables and the plot at the end.

    Returns:
        All result rows (earlier and new).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "experiment.json").write_text(json.dumps(config.to_dict(), indent=1))
    results_path = out / "results.csv"
    done = {(r["task"], r["method"], r["strong"], r["weak"], r["repeat"]) for r in read_results(results_path)}
    tasks = {t.name: t for t in config.tasks}
    todo = [c for c in plan_cells(config) if c.key not in done]
    if max_runs is not None:
        todo = todo[:max_runs]
    logger.info(
        "experiment: %d runs planned, %d already done, %d to run", len(plan_cells(config)), len(done), len(todo)
    )

    def run_dir(cell: Cell) -> str:
        return str(out / "runs" / cell.task / cell.method / f"{cell.strong}-{cell.weak}" / f"r{cell.repeat}")

    t0 = time.perf_counter()
    finished = 0
    if config.jobs == 1:
        for cell in todo:
            row = run_cell(cell, tasks[cell.task], config, run_dir(cell))
            row["run_dir"] = os.path.relpath(row["run_dir"], out)
            append_result(results_path, row)
            finished += 1
            logger.info(
                "[%d/%d] %s: test Dice %.4f (%.0f s)", finished, len(todo), cell.name, row["test_dice"], row["seconds"]
            )
    else:
        threads = config.train.get("threads")
        with ProcessPoolExecutor(
            max_workers=config.jobs, mp_context=get_context("spawn"), initializer=_worker_init, initargs=(threads,)
        ) as pool:
            pending = {pool.submit(run_cell, c, tasks[c.task], config, run_dir(c)): c for c in todo}
            while pending:
                ready, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in ready:
                    cell = pending.pop(fut)
                    row = fut.result()
                    row["run_dir"] = os.path.relpath(row["run_dir"], out)
                    append_result(results_path, row)
                    finished += 1
                    logger.info(
                        "[%d/%d] %s: test Dice %.4f (%.0f s, %.0f s elapsed)",
                        finished,
                        len(todo),
                        cell.name,
                        row["test_dice"],
                        row["seconds"],
                        time.perf_counter() - t0,
                    )
    rows = read_results(results_path)
    if report and rows:
        from model_export.experiment.report import write_report

        write_report(rows, out, config=config)
    return rows
