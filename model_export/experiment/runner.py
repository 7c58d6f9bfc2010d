"""Run an experiment grid: train, test, append one CSV row per run, then write the report.

``out_dir`` layout::

    results.csv        one row per finished run (appended as runs finish; resumable)
    experiment.json    the configuration
    runs/<task>/<method>/<strong>-<weak>/r<repeat>/   best.pt, metrics.csv, test_metrics.json (per-case
                       test metrics) and result.json (the run's results row) of each run
    table.md, summary.csv, dice_vs_strong.png          the report (``report.write_report``)
    selection.json, paired.csv, ...                     protocol 2 (``report_v2.write_report_v2``)

Re-running with the same ``out_dir`` skips every run already in ``results.csv`` (or with a
``result.json``: a run that finished just before an interruption is recovered from it).
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
    "mask_rows",
    "mask_rows_best",
    "stopped_early",
    "pseudo_boxes",
    "pseudo_fallback",
    "run_dir",
]
INT_FIELDS = ("strong", "weak", "repeat", "seed", "best_epoch", "epochs")
FLOAT_FIELDS = (
    "test_dice",
    "test_dice_paper",
    "test_iou",
    "test_hd95_mm",
    "val_dice",
    "seconds",
    "mask_rows",
    "mask_rows_best",
    "pseudo_boxes",
    "pseudo_fallback",
)


def _parse_row(raw: dict[str, Any]) -> dict[str, Any]:
    row: dict[str, Any] = dict(raw)
    for k in INT_FIELDS:
        row[k] = int(row[k])
    for k in FLOAT_FIELDS:
        v = row.get(k)
        row[k] = float(v) if v not in (None, "") else math.nan
    se = row.get("stopped_early")
    row["stopped_early"] = None if se in (None, "") else str(se).lower() in ("true", "1")
    return row


def read_results(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Rows of a results CSV with numbers parsed (missing file: no rows)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [_parse_row(raw) for raw in csv.DictReader(f)]


def _csv_value(v: Any) -> Any:
    return "" if isinstance(v, float) and math.isnan(v) else v


def append_result(path: Path, row: dict[str, Any]) -> None:
    """Append one row (writing the header first for a new file); flushed at once.

    A file written with an older set of columns is rewritten first with the current header (missing
    values left empty).
    """
    new = not path.is_file()
    if not new:
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        if header != RESULT_FIELDS:
            with open(path, newline="") as f:
                old = list(csv.DictReader(f))
            tmp = path.with_suffix(".tmp")
            with open(tmp, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
                writer.writeheader()
                for r in old:
                    writer.writerow({k: r.get(k, "") for k in RESULT_FIELDS})
            os.replace(tmp, path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_FIELDS)
        if new:
            writer.writeheader()
        writer.writerow({k: _csv_value(row.get(k, "")) for k in RESULT_FIELDS})
        f.flush()
        os.fsync(f.fileno())


def _train_once(
    train_cfg,
    cases,
    val_cases,
    manifest,
    task: TaskSpec,
    cell: Cell,
    run_dir: str,
    on_improve=None,
):
    trainer = _trainer(train_cfg, cases, val_cases, manifest, task, cell, run_dir, on_improve)
    return trainer, trainer.fit()


def _trainer(train_cfg, cases, val_cases, manifest, task: TaskSpec, cell: Cell, run_dir: str, on_improve=None):
    """The resumable ``Trainer`` of one run (``cell``) in ``run_dir``."""
    from model_export.training.trainer import Trainer

    return Trainer(
        train_cfg,
        train_cases=cases,
        val_cases=val_cases,
        classes=manifest.class_names,
        out_dir=run_dir,
        dataset={"name": manifest.name, "task": task.name, "split": f"{cell.strong}-{cell.weak}"},
        resume=True,
        on_improve=on_improve,
    )


def mask_presentations(
    history: list[dict[str, Any]], best_epoch: int, rows_per_epoch: int | None
) -> tuple[float, float]:
    """Rows that reached the segmentation loss: over the whole run and up to the best epoch.

    Uses the trainer's per-epoch ``mask_rows``; for histories without it (older runs of a model that
    trains on strong rows only) ``rows_per_epoch`` (steps x batch) per epoch is used, else NaN.
    """
    if history and all("mask_rows" in h for h in history):
        counts = [float(h["mask_rows"]) for h in history]
    elif rows_per_epoch:
        counts = [float(rows_per_epoch)] * len(history)
    else:
        return math.nan, math.nan
    return float(sum(counts)), float(sum(counts[: best_epoch + 1]))


def run_cell(cell: Cell, task: TaskSpec, config: ExperimentConfig, run_dir: str) -> dict[str, Any]:
    """Train and test one run; returns its result row (also written to ``run_dir/result.json``).

    Runs in a worker process. An arm with ``pseudo`` first writes pseudo-masks for the weak cases
    (``refined``: after training a box-pseudo-mask model in ``run_dir/refine_stage``).
    """
    from model_export.checkpoint import load_checkpoint
    from model_export.data.manifest import load_manifest
    from model_export.evaluation import evaluate_cases
    from model_export.experiment.paired import per_case_dice
    from model_export.experiment.pseudo import pseudo_cases
    from model_export.training import TrainConfig

    t0 = time.perf_counter()
    arm = config.arm(cell.method)
    manifest = load_manifest(task.manifest, check_files=False)
    train_pool = manifest.split("train")[: task.train_cases]
    val_cases = manifest.split("val")[: task.val_cases]
    test_cases = manifest.split("test")[: task.test_cases]
    if not test_cases:
        raise ValueError(f"task {task.name}: the manifest has no test case")
    cases = assign_cases(train_pool, cell.strong, cell.weak, cell.seed)
    train_cfg = TrainConfig.from_dict(
        {**arm.train_options(config.train), "model": arm.model, "seed": cell.seed, "progress": False}
    )
    eval_opts = {
        "classes": manifest.class_names,
        "region": config.region,
        "patch_size": train_cfg.patch_size,
        "margin": config.margin,
        "z_margin": config.z_margin,
    }
    pseudo_stats = None
    if arm.pseudo is not None:
        cases, pseudo_stats = pseudo_cases(cases, Path(run_dir) / "pseudo_box", kind="box")
        if arm.pseudo == "refined":
            stage_dir = str(Path(run_dir) / "refine_stage")
            _, first = _train_once(train_cfg, cases, val_cases, manifest, task, cell, stage_dir)
            model, card, _ = load_checkpoint(first.best_path, device="cpu")
            weak_again = assign_cases(train_pool, cell.strong, cell.weak, cell.seed)
            cases, pseudo_stats = pseudo_cases(
                weak_again,
                Path(run_dir) / "pseudo_refined",
                kind="refined",
                model=model,
                normalization=card.input.normalization,
                patch_size=train_cfg.patch_size,
            )
            del model
    paper_best = {"dice": math.nan}
    holder: dict[str, Any] = {}

    def on_improve(epoch: int, module, val_dice: float) -> None:
        if config.report != "paper":
            return
        trainer = holder["trainer"]
        was_training = module.training
        res = evaluate_cases(module, test_cases, trainer.normalization, device=trainer.device, **eval_opts)
        module.train(was_training)
        if not math.isfinite(paper_best["dice"]) or res.mean_dice > paper_best["dice"]:
            paper_best["dice"] = res.mean_dice

    trainer = _trainer(train_cfg, cases, val_cases, manifest, task, cell, run_dir, on_improve)
    holder["trainer"] = trainer
    try:
        result = trainer.fit()
    except ValueError as exc:  # a half-done run from another code version: start it again
        if "cannot resume" not in str(exc):
            raise
        logger.warning("%s: %s; starting the run again", cell.name, exc)
        Path(trainer.last_path).unlink(missing_ok=True)
        result = trainer.fit()
    model, card, _ = load_checkpoint(result.best_path, device=trainer.device)
    res = evaluate_cases(model, test_cases, card.input.normalization, device=trainer.device, **eval_opts)
    summary = res.summary()
    Path(run_dir, "test_metrics.json").write_text(json.dumps(summary, indent=1, default=str))
    last = Path(result.last_path)
    if last.is_file():
        last.unlink()  # optimizer state is only needed while the run is unfinished
    hd = [v for v in res.mean("hd95") if math.isfinite(v)]
    iou = [v for v in res.mean("iou") if math.isfinite(v)]
    per_epoch = None if arm.uses_weak else trainer.steps_per_epoch * train_cfg.batch_size
    masks, masks_best = mask_presentations(result.history, result.best_epoch, per_epoch)
    row = {
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
        "mask_rows": masks,
        "mask_rows_best": masks_best,
        "stopped_early": result.stopped_early,
        "pseudo_boxes": pseudo_stats.boxes if pseudo_stats else "",
        "pseudo_fallback": pseudo_stats.fallback_boxes if pseudo_stats else "",
        "run_dir": run_dir,
    }
    Path(run_dir, "result.json").write_text(
        json.dumps({**row, "per_case": per_case_dice(summary)}, indent=1, default=str)
    )
    return row


def _worker_init(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)
    logging.basicConfig(level=logging.WARNING)


def cell_dir(out: Path, cell: Cell) -> Path:
    """Folder of one run inside the experiment folder."""
    return out / "runs" / cell.task / cell.method / f"{cell.strong}-{cell.weak}" / f"r{cell.repeat}"


def _recover(out: Path, results_path: Path, cells: list[Cell], done: set) -> None:
    """Append rows of runs that wrote ``result.json`` but are missing from ``results.csv``."""
    for cell in cells:
        if cell.key in done:
            continue
        path = cell_dir(out, cell) / "result.json"
        if path.is_file():
            row = json.loads(path.read_text())
            row.pop("per_case", None)
            row["run_dir"] = os.path.relpath(row["run_dir"], out) if os.path.isabs(row["run_dir"]) else row["run_dir"]
            append_result(results_path, row)
            done.add(cell.key)
            logger.info("recovered %s from %s", cell.name, path)


def _run_cells(cells: list[Cell], config: ExperimentConfig, out: Path, results_path: Path) -> int:
    """Run ``cells`` (``config.jobs`` in parallel), appending each finished row; returns how many ran."""
    tasks = {t.name: t for t in config.tasks}
    t0 = time.perf_counter()
    finished = 0

    def record(cell: Cell, row: dict[str, Any]) -> None:
        nonlocal finished
        row["run_dir"] = os.path.relpath(row["run_dir"], out)
        append_result(results_path, row)
        finished += 1
        logger.info(
            "[%d/%d] %s: test Dice %.4f (%d epochs, %.0f s, %.0f s elapsed)",
            finished,
            len(cells),
            cell.name,
            row["test_dice"],
            row["epochs"],
            row["seconds"],
            time.perf_counter() - t0,
        )

    if config.jobs == 1:
        for cell in cells:
            record(cell, run_cell(cell, tasks[cell.task], config, str(cell_dir(out, cell))))
        return finished
    threads = config.train.get("threads")
    with ProcessPoolExecutor(
        max_workers=config.jobs, mp_context=get_context("spawn"), initializer=_worker_init, initargs=(threads,)
    ) as pool:
        pending = {pool.submit(run_cell, c, tasks[c.task], config, str(cell_dir(out, c))): c for c in cells}
        while pending:
            ready, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in ready:
                cell = pending.pop(fut)
                record(cell, fut.result())
    return finished


def with_per_case(rows: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """``rows`` with each run's per-case test Dice (``per_case``) read from its run folder."""
    from model_export.experiment.paired import load_per_case

    return [{**r, "per_case": load_per_case(out / r["run_dir"])} for r in rows]


def v2_selection(config: ExperimentConfig, rows: list[dict[str, Any]], out: Path) -> dict[str, Any]:
    """Protocol 2's learning-curve analysis and split selection from the finished rows (see ``v2``)."""
    from model_export.experiment.paired import index_runs
    from model_export.experiment.v2 import check_config, curve_analysis, select_splits, selection_to_dict

    curve, _ = check_config(config)
    index = index_runs(with_per_case(rows, out))
    analysis = {t.name: curve_analysis(index, t, curve) for t in config.tasks}
    selection = {t.name: select_splits(analysis[t.name], curve) for t in config.tasks}
    return selection_to_dict(selection, analysis)


def first_stage_cells(config: ExperimentConfig) -> list[Cell]:
    """Protocol 2's first pool of runs: the learning curve, plus every later stage when ``curve.select``
    fixes the splits in advance."""
    from model_export.experiment.v2 import curve_cells, main_cells

    curve = curve_cells(config)
    spec = config.curve or {}
    if spec.get("select"):
        selection = {
            t.name: {"splits": [(s, int(t.train_cases or 0) - s) for s in spec["select"]]} for t in config.tasks
        }
        curve = curve + main_cells(config, selection, done={c.key for c in curve})
    return curve


def planned_stages(config: ExperimentConfig, out_dir: str | os.PathLike) -> list[tuple[str, list[Cell], set]]:
    """What ``run_experiment`` would run in ``out_dir`` now, without running or writing anything.

    A run counts as done when ``results.csv`` has its row or its folder has a ``result.json``. For
    protocol 2 the main and ablation rows are listed only once the learning curve is complete (the
    split selection is computed from the finished runs, as ``run_experiment`` does).

    Returns:
        Per stage: its name, all its cells (priority order) and the keys of those already done.
    """
    out = Path(out_dir)
    results_path = out / "results.csv"
    rows = read_results(results_path)
    done = {(r["task"], r["method"], r["strong"], r["weak"], r["repeat"]) for r in rows}

    def finished(cells: list[Cell]) -> set:
        return {c.key for c in cells if c.key in done or (cell_dir(out, c) / "result.json").is_file()}

    if config.protocol == 1:
        cells = plan_cells(config)
        return [("experiment", cells, finished(cells))]
    from model_export.experiment.v2 import main_cells

    curve = first_stage_cells(config)
    stages = [("learning curve", curve, finished(curve))]
    if len(stages[0][2]) == len(curve) and all(c.key in done for c in curve):
        sel = v2_selection(config, rows, out)
        selection = {k: {"splits": [tuple(x) for x in v["splits"]]} for k, v in sel["selection"].items()}
        cells = main_cells(config, selection)
        stages.append((f"main and ablation rows at {sel['selection']}", cells, finished(cells)))
    return stages


def run_experiment(
    config: ExperimentConfig, out_dir: str | os.PathLike, *, max_runs: int | None = None, report: bool = True
) -> list[dict[str, Any]]:
    """Run every unfinished cell, appending rows to ``out_dir/results.csv``; then write the report.

    Protocol 2 runs the learning curve first, writes ``selection.json``, then the main and ablation
    rows at the selected splits (``model_export.experiment.v2``).

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
    budget = [math.inf if max_runs is None else max_runs]

    def done_keys() -> set:
        return {(r["task"], r["method"], r["strong"], r["weak"], r["repeat"]) for r in read_results(results_path)}

    def run_stage(cells: list[Cell], stage: str) -> None:
        done = done_keys()
        _recover(out, results_path, cells, done)
        todo = [c for c in cells if c.key not in done]
        if budget[0] < len(todo):
            todo = todo[: int(budget[0])]
        logger.info(
            "%s: %d runs planned, %d already done, %d to run", stage, len(cells), len(cells) - len(todo), len(todo)
        )
        budget[0] -= _run_cells(todo, config, out, results_path)

    if config.protocol == 1:
        run_stage(plan_cells(config), "experiment")
    else:
        from model_export.experiment.v2 import main_cells

        curve = first_stage_cells(config)
        run_stage(curve, "learning curve")
        done = done_keys()
        if all(c.key in done for c in curve):
            sel = v2_selection(config, read_results(results_path), out)
            (out / "selection.json").write_text(json.dumps(sel, indent=1))
            for task, s in sel["selection"].items():
                logger.info("%s: selected splits %s%s", task, s["splits"], " (fallback)" if s["fallback"] else "")
            selection = {k: {"splits": [tuple(x) for x in v["splits"]]} for k, v in sel["selection"].items()}
            run_stage(main_cells(config, selection), "main and ablation rows")
        else:
            logger.info("learning curve unfinished: main rows not planned yet")
    rows = read_results(results_path)
    if report and rows:
        if config.protocol == 2:
            from model_export.experiment.report_v2 import write_report_v2

            write_report_v2(with_per_case(rows, out), out, config=config)
        else:
            from model_export.experiment.report import write_report

            write_report(rows, out, config=config)
    return rows
