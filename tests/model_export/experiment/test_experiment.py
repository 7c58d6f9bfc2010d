"""Experiment protocol: CIs by hand, planned grid, case assignment, report layout, a tiny resumable run."""

from __future__ import annotations

import csv
import math

import pytest

from model_export.cli import main
from model_export.data.manifest import load_manifest
from model_export.experiment import ExperimentConfig, mean_ci, plan_cells, run_experiment
from model_export.experiment.presets import EXPERIMENT_PRESETS
from model_export.experiment.protocol import assign_cases, scaled_splits
from model_export.experiment.report import markdown_table, summarise
from model_export.experiment.runner import read_results
from tests.model_export.tiny_data import write_tiny_dataset


def test_mean_ci_by_hand():
    # mean 0.82, s = 0.02, t(0.975, df=2) = 4.302652729911275 -> half = 4.302652729911275 * 0.02 / sqrt(3)
    mean, half = mean_ci([0.80, 0.82, 0.84])
    assert mean == pytest.approx(0.82)
    assert half == pytest.approx(4.302652729911275 * 0.02 / math.sqrt(3), rel=1e-9)
    # n = 4, values 1..4: s = sqrt(5/3), t(0.975, 3) = 3.182446305284263
    mean, half = mean_ci([1, 2, 3, 4])
    assert mean == 2.5 and half == pytest.approx(3.182446305284263 * math.sqrt(5 / 3) / 2, rel=1e-9)
    # 90%: t(0.95, 2) = 2.919985580355516
    assert mean_ci([0.80, 0.82, 0.84], 0.90)[1] == pytest.approx(2.919985580355516 * 0.02 / math.sqrt(3), rel=1e-9)
    assert math.isnan(mean_ci([0.5])[1])
    assert mean_ci([0.5, math.nan, 0.7])[0] == pytest.approx(0.6)
    with pytest.raises(ValueError):
        mean_ci([])


def test_paper_grid():
    config = ExperimentConfig.from_dict(
        {
            **EXPERIMENT_PRESETS["paper"],
            "tasks": [{**t, "manifest": "x.json"} for t in EXPERIMENT_PRESETS["paper"]["tasks"]],
        }
    )
    cells = plan_cells(config)
    # 5 splits x 5 methods, minus MS-Net and MSDN at the split without weak cases, x 2 tasks x 3 repeats
    assert len(cells) == (25 - 2) * 2 * 3
    lung = {(c.method, c.strong, c.weak) for c in cells if c.task == "lung"}
    assert ("msdn", 60, 100) in lung and ("msdn", 160, 0) not in lung and ("unet", 160, 0) in lung
    cochlea = sorted({(c.strong, c.weak) for c in cells if c.task == "cochlea"}, reverse=True)
    assert cochlea == [(66, 0), (44, 22), (33, 33), (22, 44), (11, 55)]
    assert {c.seed for c in cells} == {0, 1, 2}
    assert scaled_splits(EXPERIMENT_PRESETS["paper"]["tasks"][0]["splits"], 40) == [
        (40, 0),
        (30, 10),
        (25, 15),
        (20, 20),
        (15, 25),
    ]


def test_assign_cases_nested_and_weak(tmp_path):
    manifest = load_manifest(write_tiny_dataset(tmp_path, strong=6, weak=0, val=1, test=1))
    pool = manifest.split("train")
    a = assign_cases(pool, 4, 2, seed=1)
    b = assign_cases(pool, 2, 4, seed=1)
    assert [c.strong for c in a] == [True] * 4 + [False] * 2
    assert {c.id for c in b[:2]} <= {c.id for c in a[:4]}  # fewer strong cases: a subset, same repeat
    assert {c.id for c in a} == {c.id for c in b}
    assert all(c.boxes for c in a[4:])  # weak cases carry boxes derived from their masks
    assert [c.id for c in assign_cases(pool, 4, 2, seed=2)] != [c.id for c in a]
    with pytest.raises(ValueError, match="needs 7"):
        assign_cases(pool, 5, 2, seed=0)


def _rows():
    rows = []
    for method, values in {"unet": [0.7, 0.8, 0.9], "msdn": [0.8, 0.82, 0.84]}.items():
        for r, v in enumerate(values):
            rows.append({"task": "lung", "method": method, "strong": 2, "weak": 2, "repeat": r, "test_dice": v})
    rows.append({"task": "lung", "method": "unet", "strong": 4, "weak": 0, "repeat": 0, "test_dice": 0.9})
    return rows


def test_summary_and_markdown_layout():
    summary = summarise(_rows())
    cells = {(s["method"], s["strong"]): s for s in summary}
    assert cells[("msdn", 2)]["n"] == 3
    assert cells[("msdn", 2)]["mean_dice_pct"] == pytest.approx(82.0)
    assert cells[("msdn", 2)]["ci95_pct"] == pytest.approx(100 * 4.302652729911275 * 0.02 / math.sqrt(3))
    md = markdown_table(summary).splitlines()
    assert md[2] == "| Method | 4-0 | 2-2 |"
    assert md[4].startswith("| U-Net | 90.00 | 80.00±24.84 |")
    assert md[5] == "| MSDN | - | 82.00±4.97 |"


def test_tiny_experiment_runs_resumes_and_reports(tmp_path, capsys):
    manifest = write_tiny_dataset(tmp_path / "data", strong=4, weak=0, val=1, test=1)
    config = ExperimentConfig(
        tasks=[{"name": "tiny", "manifest": str(manifest), "splits": [[4, 0], [2, 2]]}],
        methods=["unet", "msdn"],
        repeats=2,
        train={
            "preset": "small",
            "model_options": {"base_channels": 4, "head_channels": 8},
            "patch_size": 32,
            "max_epochs": 1,
            "steps_per_epoch": 2,
            "threads": 1,
        },
        report="paper",
    )
    out = tmp_path / "out"
    first = run_experiment(config, out, max_runs=2)
    assert len(first) == 2
    rows = run_experiment(config, out)
    # unet at 4-0 and 2-2, msdn only at 2-2 (it needs weak cases), 2 repeats
    assert sorted((r["method"], r["strong"], r["weak"], r["repeat"]) for r in rows) == sorted(
        [
            ("unet", 4, 0, 0),
            ("unet", 2, 2, 0),
            ("msdn", 2, 2, 0),
            ("unet", 4, 0, 1),
            ("unet", 2, 2, 1),
            ("msdn", 2, 2, 1),
        ]
    )
    assert len(run_experiment(config, out)) == 6  # nothing left to run
    with open(out / "results.csv") as f:
        header = next(csv.reader(f))
    assert header[:7] == ["task", "method", "strong", "weak", "repeat", "seed", "test_dice"]
    assert all(0 <= r["test_dice"] <= 1 and 0 <= r["test_dice_paper"] <= 1 for r in read_results(out / "results.csv"))
    with open(out / "summary.csv") as f:
        summary = list(csv.DictReader(f))
    assert sorted((s["method"], s["strong"], s["n"]) for s in summary) == [
        ("msdn", "2", "2"),
        ("unet", "2", "2"),
        ("unet", "4", "2"),
    ]
    table = (out / "table.md").read_text()
    assert "| Method | 4-0 | 2-2 |" in table and "Paper-style reporting" in table
    assert (out / "dice_vs_strong.png").stat().st_size > 1000
    # the command re-reads the results
    assert main(["experiment", "--out", str(out), "--report-only"]) == 0
    assert "| MSDN | - |" in capsys.readouterr().out


def test_experiment_command_dry_run(capsys):
    code = main(
        [
            "experiment",
            "--preset",
            "cpu",
            "--task",
            "lung=a.json",
            "--task",
            "cochlea=b.json",
            "--out",
            "unused",
            "--dry-run",
            "--repeats",
            "1",
            "--methods",
            "unet,msdn",
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.split()
    assert len(lines) == 2 * (5 + 4)
    assert "lung/msdn/15-25/r0" in lines and "cochlea/unet/4-20/r0" in lines
    assert main(["experiment", "--preset", "cpu", "--task", "other=a.json", "--out", "x", "--dry-run"]) == 2
    assert "give --splits" in capsys.readouterr().err
