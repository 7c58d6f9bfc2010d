"""``msdn experiment``: the paper's Table 1 protocol (methods x strong-weak splits x repeats).

Examples::

    # the paper's protocol on full-size data (GPU advised)
    msdn experiment --preset paper --task lung=data/lung/manifest.json --task cochlea=data/cochlea/manifest.json \\
        --out results/paper
    # the CPU-sized configuration of docs/results/cpu (about an hour on 2 cores)
    msdn experiment --preset cpu --task lung=data/lung_cpu/manifest.json \\
        --task cochlea=data/cochlea_cpu/manifest.json --out docs/results/cpu
    # a JSON/YAML file holding ExperimentConfig fields
    msdn experiment --config my_experiment.yaml --out results/mine
    # protocol 2 (learning curve, scarce-split selection, paired statistics; see docs/training.md)
    msdn experiment --preset cpu_v2 --task lung=data/lung_v2/manifest.json --out runs/cpu_v2

Interrupted runs continue where they stopped (finished runs are read back from OUT/results.csv).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from model_export.experiment.presets import EXPERIMENT_PRESETS

    parser.add_argument("--out", required=True, help="results folder (results.csv, table.md, summary.csv, plot)")
    parser.add_argument("--preset", choices=sorted(EXPERIMENT_PRESETS), default="paper")
    parser.add_argument("--config", default=None, help="JSON/YAML ExperimentConfig (overrides --preset)")
    parser.add_argument(
        "--task",
        action="append",
        default=[],
        metavar="NAME=MANIFEST",
        help="task and its manifest (lung, cochlea, or any name with --splits); repeatable",
    )
    parser.add_argument("--splits", default=None, help="strong-weak splits for all tasks, e.g. 24-0,16-8,8-16")
    parser.add_argument(
        "--methods", default=None, help="comma-separated subset of unet,unet_sse,ms_net,msdn_minus,msdn"
    )
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None, help="maximum epochs per run")
    parser.add_argument("--steps-per-epoch", type=int, default=None)
    parser.add_argument("--jobs", type=int, default=None, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per run")
    parser.add_argument("--device", default=None)
    parser.add_argument(
        "--train-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a training option of every run (VALUE parsed as JSON when it parses), repeatable",
    )
    parser.add_argument(
        "--report",
        choices=("val", "paper"),
        default=None,
        help=(
            "val: test the best-validation checkpoint (default); "
            "paper: also the best test Dice at any validation improvement"
        ),
    )
    parser.add_argument("--max-runs", type=int, default=None, help="stop after this many new runs")
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from OUT/results.csv")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the runs still to do in OUT (finished ones are counted, not listed) and exit",
    )


def build_config(args: argparse.Namespace):
    from model_export.experiment.presets import EXPERIMENT_PRESETS
    from model_export.experiment.protocol import ExperimentConfig

    if args.config:
        config = ExperimentConfig.from_file(args.config)
        data = config.to_dict()
    else:
        data = json.loads(json.dumps(EXPERIMENT_PRESETS[args.preset]))
    manifests = {}
    for item in args.task:
        if "=" not in item:
            raise ValueError(f"--task must be NAME=MANIFEST, got {item!r}")
        name, path = item.split("=", 1)
        manifests[name] = path
    if manifests:
        known = {t["name"]: t for t in data["tasks"]}
        tasks = []
        for name, path in manifests.items():
            if name not in known and not args.splits:
                raise ValueError(f"task {name!r} has no splits in preset {args.preset!r}: give --splits")
            tasks.append({**known.get(name, {"name": name}), "manifest": path})
        data["tasks"] = tasks
    if args.splits:
        try:
            splits = [tuple(int(v) for v in s.split("-")) for s in args.splits.split(",")]
        except ValueError:
            raise ValueError(f"--splits must look like 24-0,16-8, got {args.splits!r}") from None
        for t in data["tasks"]:
            t["splits"] = splits
    missing = [t["name"] for t in data["tasks"] if not t.get("manifest")]
    if missing:
        raise ValueError(f"no manifest for task(s) {missing}: give --task NAME=MANIFEST")
    if args.methods:
        data["methods"] = [m.strip() for m in args.methods.split(",") if m.strip()]
    for key, value in (("repeats", args.repeats), ("seed", args.seed), ("jobs", args.jobs), ("report", args.report)):
        if value is not None:
            data[key] = value
    for key, value in (
        ("max_epochs", args.epochs),
        ("steps_per_epoch", args.steps_per_epoch),
        ("threads", args.threads),
        ("device", args.device),
    ):
        if value is not None:
            data["train"][key] = value
    for item in args.train_option:
        if "=" not in item:
            raise ValueError(f"--train-option must be KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        data["train"][key.strip()] = value
    return ExperimentConfig.from_dict(data)


def run(args: argparse.Namespace) -> int:
    from model_export.experiment.protocol import ExperimentConfig
    from model_export.experiment.report import write_report
    from model_export.experiment.runner import read_results, run_experiment

    try:
        if args.report_only:
            rows = read_results(f"{args.out}/results.csv")
            if not rows:
                raise ValueError(f"no results in {args.out}/results.csv")
            saved = Path(args.out) / "experiment.json"
            config = ExperimentConfig.from_dict(json.loads(saved.read_text())) if saved.is_file() else None
            if config is not None and config.protocol == 2:
                from model_export.experiment.report_v2 import write_report_v2
                from model_export.experiment.runner import with_per_case

                paths = write_report_v2(with_per_case(rows, Path(args.out)), args.out, config=config)
            else:
                paths = write_report(rows, args.out, config=config)
            sys.stdout.write(paths["table"].read_text())
            return 0
        config = build_config(args)
        if args.dry_run:
            from model_export.experiment.runner import planned_stages

            stages = planned_stages(config, args.out)
            if config.protocol == 2:
                sys.stdout.write("# protocol 2, stage 1 (learning curve); later stages are planned from its results\n")
            for i, (stage, cells, done) in enumerate(stages):
                if i or done:
                    todo = len(cells) - len(done)
                    sys.stdout.write(f"# {stage}: {len(cells)} runs, {len(done)} done in {args.out}, {todo} to run\n")
                for cell in cells:
                    if cell.key not in done:
                        sys.stdout.write(cell.name + "\n")
            return 0
        rows = run_experiment(config, args.out, max_runs=args.max_runs)
    except ValueError as exc:
        sys.stderr.write(f"msdn experiment: error: {exc}\n")
        return 2
    sys.stdout.write(f"{len(rows)} runs in {args.out}/results.csv; table {args.out}/table.md\n")
    return 0
