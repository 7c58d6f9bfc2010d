"""Protocol v2: learning-curve gaps and split selection by hand, stage order, a tiny resumable run."""

from __future__ import annotations

import csv
import json
import math

import pytest

from model_export.cli import main
from model_export.experiment import ExperimentConfig, run_experiment
from model_export.experiment.paired import index_runs
from model_export.experiment.protocol import TaskSpec
from model_export.experiment.runner import mask_presentations, read_results
from model_export.experiment.v2 import CurveSpec, curve_analysis, curve_cells, main_cells, select_splits
from tests.model_export.tiny_data import write_tiny_dataset


def _config(**kw):
    base = {
        "protocol": 2,
        "tasks": [{"name": "lung", "manifest": "x.json", "splits": [[10, 0]], "train_cases": 10}],
        "curve": {"method": "unet", "strong": [2, 5], "repeats": 3},
        "methods": ["unet", "msdn"],
        "repeats": 4,
        "ablations": {"methods": ["unet_box"], "repeats": 2},
        "arms": {"unet_box": {"model": "unet", "pseudo": "box"}},
    }
    return ExperimentConfig.from_dict({**base, **kw})


def _curve_rows(values):
    """values: {strong: [per-repeat Dice of the single test case]}"""
    rows = []
    for strong, per_repeat in values.items():
        for r, v in enumerate(per_repeat):
            rows.append(
                {
                    "task": "lung",
                    "method": "unet",
                    "strong": strong,
                    "weak": 10 - strong,
                    "repeat": r,
                    "per_case": {"c": v},
                }
            )
    return rows


def test_curve_gap_and_selection_by_hand():
    curve = CurveSpec(strong=[2, 5], repeats=3, min_se=3.0)
    task = TaskSpec("lung", splits=[(10, 0)], train_cases=10)
    # all-strong 0.80, 0.82, 0.84; 5 strong: gaps 0.01, 0.03, -0.01 (mean 0.01, se 0.011547 -> 0.87 SE);
    # 2 strong: gaps 0.20, 0.22, 0.24 (mean 0.22, se 0.011547 -> 19.1 SE)
    rows = _curve_rows({10: [0.80, 0.82, 0.84], 5: [0.79, 0.79, 0.85], 2: [0.60, 0.60, 0.60]})
    analysis = curve_analysis(index_runs(rows), task, curve)
    by = {r["strong"]: r for r in analysis}
    se = 100 * 0.02 / math.sqrt(3)
    assert by[5]["gap_pct"] == pytest.approx(1.0) and by[5]["se_repeat_pct"] == pytest.approx(se)
    assert by[5]["gap_over_se"] == pytest.approx(1.0 / se) and not by[5]["passes"]
    assert by[2]["gap_pct"] == pytest.approx(22.0) and by[2]["passes"]
    assert math.isnan(by[10]["gap_pct"])
    assert select_splits(analysis, curve) == {"splits": [(2, 8)], "fallback": False, "forced": False}
    # nothing passes: the largest gap/SE is the fallback, or nothing
    strict = CurveSpec(strong=[2, 5], repeats=3, min_se=100.0)
    assert select_splits(curve_analysis(index_runs(rows), task, strict), strict) == {
        "splits": [(2, 8)],
        "fallback": True,
        "forced": False,
    }
    none = CurveSpec(strong=[2, 5], repeats=3, min_se=100.0, fallback=False)
    assert select_splits(curve_analysis(index_runs(rows), task, none), none)["splits"] == []
    forced = CurveSpec(strong=[2, 5], repeats=3, select=[5])
    assert select_splits(curve_analysis(index_runs(rows), task, forced), forced)["splits"] == [(5, 5)]
    with pytest.raises(ValueError, match="subset"):
        CurveSpec(strong=[2, 5], select=[3])


def test_stage_order_and_reuse_of_curve_runs():
    config = _config()
    curve = curve_cells(config)
    assert [(c.strong, c.repeat) for c in curve[:3]] == [(10, 0), (2, 0), (5, 0)] and len(curve) == 9
    done = {c.key for c in curve}
    cells = main_cells(config, {"lung": {"splits": [(2, 8), (5, 5)]}}, done=done)
    names = [c.name for c in cells]
    # the scarcest split first: U-Net repeats 3 (0-2 came from the curve), MSDN 0-3; then the ablation
    assert names[:5] == [
        "lung/msdn/2-8/r0",
        "lung/msdn/2-8/r1",
        "lung/msdn/2-8/r2",
        "lung/unet/2-8/r3",
        "lung/msdn/2-8/r3",
    ]
    assert names[5:7] == ["lung/unet_box/2-8/r0", "lung/unet_box/2-8/r1"]
    rest = names[7:]
    assert "lung/msdn/10-0/r0" not in rest and "lung/unet/10-0/r3" in rest and "lung/msdn/5-5/r3" in rest
    assert len(set(names)) == len(names) and not (set(names) & {c.name for c in curve})
    # ablations: all repeats of one row before the next (default), or repeat-major
    two = {"methods": ["unet_box", "msdn_minus"], "repeats": 2}
    abl = [c.name for c in main_cells(_config(ablations=two), {"lung": {"splits": [(2, 8)]}}, done=done)][5:9]
    assert [n.split("/")[1] + n[-1] for n in abl] == ["unet_box0", "unet_box1", "msdn_minus0", "msdn_minus1"]
    rep = {**two, "order": "repeat"}
    abl = [c.name for c in main_cells(_config(ablations=rep), {"lung": {"splits": [(2, 8)]}}, done=done)][5:9]
    assert [n.split("/")[1] + n[-1] for n in abl] == ["unet_box0", "msdn_minus0", "unet_box1", "msdn_minus1"]


def test_config_checks():
    with pytest.raises(ValueError, match="curve"):
        curve_cells(_config(curve=None))
    with pytest.raises(ValueError, match="strong cases only"):
        curve_cells(_config(curve={"method": "msdn", "strong": [2], "repeats": 2}))
    with pytest.raises(ValueError, match="train_cases"):
        curve_cells(_config(tasks=[{"name": "lung", "manifest": "x", "splits": [[10, 0]]}]))
    with pytest.raises(ValueError, match="non-empty subset"):
        _config(methods=["nope"])
    with pytest.raises(ValueError, match="pseudo"):
        _config(arms={"bad": {"model": "unet", "pseudo": "ellipse"}})


def test_mask_presentations():
    hist = [{"mask_rows": 4}, {"mask_rows": 6}, {"mask_rows": 2}]
    assert mask_presentations(hist, 1, None) == (12.0, 10.0)
    assert mask_presentations([{}, {}], 0, 32) == (64.0, 32.0)
    assert all(math.isnan(v) for v in mask_presentations([{}], 0, None))


def test_tiny_v2_runs_resumes_and_reports(tmp_path, capsys):
    manifest = write_tiny_dataset(tmp_path / "data", strong=5, weak=0, val=1, test=2)
    config = ExperimentConfig.from_dict(
        {
            "protocol": 2,
            "tasks": [{"name": "tiny", "manifest": str(manifest), "splits": [[5, 0]], "train_cases": 5}],
            "curve": {"method": "unet", "strong": [2], "repeats": 2, "select": [2]},
            "methods": ["unet", "unet_box"],
            "repeats": 2,
            "ablations": {"methods": ["unet_refined"], "repeats": 1},
            "arms": {
                "unet_box": {"model": "unet", "pseudo": "box", "label": "U-Net + boxes"},
                "unet_refined": {"model": "unet", "pseudo": "refined"},
            },
            "train": {
                "preset": "small",
                "model_options": {"base_channels": 4},
                "patch_size": 32,
                "max_epochs": 1,
                "steps_per_epoch": 1,
                "threads": 1,
            },
        }
    )
    out = tmp_path / "out"
    assert len(run_experiment(config, out, max_runs=3)) == 3  # stops inside the curve: main rows not planned
    assert not (out / "selection.json").exists()
    rows = run_experiment(config, out)
    keys = sorted((r["method"], r["strong"], r["repeat"]) for r in rows)
    assert keys == sorted(
        [("unet", 5, 0), ("unet", 5, 1), ("unet", 2, 0), ("unet", 2, 1)]
        + [("unet_box", 2, 0), ("unet_box", 2, 1), ("unet_refined", 2, 0)]
    )
    assert len(run_experiment(config, out)) == 7  # nothing left
    sel = json.loads((out / "selection.json").read_text())
    assert sel["selection"]["tiny"]["splits"] == [[2, 3]]
    res = read_results(out / "results.csv")
    refined = next(r for r in res if r["method"] == "unet_refined")
    assert refined["pseudo_boxes"] > 0 and refined["mask_rows"] == 4.0  # 1 epoch x 1 step x batch 4
    with open(out / "per_case.csv") as f:
        assert len(list(csv.DictReader(f))) == 7 * 2  # every run, both test cases
    with open(out / "paired.csv") as f:
        paired = {r["method"]: r for r in csv.DictReader(f)}
    assert set(paired) == {"unet_box", "unet_refined"} and paired["unet_box"]["repeats"] == "2"
    table = (out / "table.md").read_text()
    assert "learning curve" in table and "U-Net + boxes" in table and "paired difference" in table
    assert (out / "dice_vs_strong.png").stat().st_size > 1000
    assert main(["experiment", "--out", str(out), "--report-only"]) == 0
    assert "protocol 2" in capsys.readouterr().out


def test_arm_options_merge_model_options():
    from model_export.experiment.presets import V2_ARMS
    from model_export.experiment.protocol import Arm

    arm = Arm(name="s1", **V2_ARMS["msdn_bal_s1"])
    merged = arm.train_options({"lr": 0.1, "model_options": {"base_channels": 8, "head_channels": 16}})
    assert merged["model_options"] == {"base_channels": 8, "head_channels": 16, "detection_strides": [8, 4, 2, 1]}
    assert merged["lr"] == 0.1 and merged["batch_composition"] == "2:2" and merged["fit_anchors"] is True
    assert Arm(name="u", model="unet").train_options({"lr": 0.1}) == {"lr": 0.1}
    assert Arm(name="b", **V2_ARMS["unet_box"]).uses_weak and not Arm(name="u", model="unet").uses_weak
    with pytest.raises(ValueError, match="seed"):
        Arm(name="x", model="unet", train={"seed": 3})


def test_every_v2_arm_builds_a_training_config(capsys):
    # the presets' arms are valid TrainConfigs (checked before any run starts)
    code = main(
        ["experiment", "--preset", "cpu_v2", "--task", "lung=x.json", "--out", "unused", "--dry-run"]
        + ["--train-option", "max_epochs=3", "--train-option", 'model_options={"base_channels": 4}']
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "protocol 2" in out and "lung/unet/3-37/r0" in out and len(out.splitlines()) == 1 + 4 * 3
    assert (
        main(["experiment", "--preset", "cpu_v2", "--task", "lung=x.json", "--out", "u", "--train-option", "lr"]) == 2
    )
    bad = ["experiment", "--preset", "cpu_v2", "--task", "lung=x.json", "--out", "u", "--dry-run"]
    assert main(bad + ["--train-option", "batch_composition=3:3"]) == 2


def test_cpu_v3_preset_plans_a_shorter_curve_and_raises_the_epoch_cap(capsys):
    from model_export.experiment.presets import EXPERIMENT_PRESETS as PRESETS

    assert PRESETS["cpu_v3"]["train"]["max_epochs"] == 150 and PRESETS["cpu_v3"]["repeats"] == 10
    assert main(["experiment", "--preset", "cpu_v3", "--task", "lung=x.json", "--out", "unused", "--dry-run"]) == 0
    planned = capsys.readouterr().out.splitlines()[1:]
    # U-Net at 40, 3 and 10 strong cases, 3 repeats each
    assert len(planned) == 9 and {p.split("/")[2] for p in planned} == {"40-0", "3-37", "10-30"}


def _preset_config(**changes):
    from model_export.experiment.presets import EXPERIMENT_PRESETS

    data = json.loads(json.dumps(EXPERIMENT_PRESETS["cpu_v2"]))
    data["tasks"][0]["manifest"] = "x.json"
    for key, value in changes.items():
        data["ablations"][key] = value
    return ExperimentConfig.from_dict(data)


def test_unet_tight_is_appended_without_changing_earlier_runs():
    config = _preset_config()
    assert config.ablations["methods"][-1] == "unet_tight" and config.arm("unet_tight").uses_weak
    old = _preset_config(methods=config.ablations["methods"][:-1])
    selection = {"lung": {"splits": [(3, 37)]}}
    new_cells, old_cells = main_cells(config, selection), main_cells(old, selection)
    # the runs of the earlier plan keep their keys and seeds (so their results are still found)
    assert set(old_cells) < set(new_cells)
    added = [c for c in new_cells if c not in set(old_cells)]
    assert [(c.name, c.seed) for c in added] == [(f"lung/unet_tight/3-37/r{r}", r) for r in range(3)]
    names = [c.name for c in new_cells]
    assert names.index("lung/unet_tight/3-37/r0") == names.index("lung/msdn_minus/3-37/r2") + 1
    assert not any("unet_tight/40-0" in n for n in names)  # it needs weak cases


def test_dry_run_lists_only_unfinished_runs_of_out(tmp_path, capsys):
    from model_export.experiment.runner import RESULT_FIELDS, append_result, cell_dir

    config = _preset_config()
    out = tmp_path / "out"
    curve_values = {40: [0.80, 0.82, 0.84], 10: [0.79, 0.80, 0.85], 5: [0.79, 0.80, 0.85], 3: [0.50, 0.52, 0.56]}

    def finish(cell, dice, *, in_csv=True):
        run = cell_dir(out, cell)
        run.mkdir(parents=True)
        cases = [{"case_id": f"c{i}", "dice": [dice + 0.01 * i]} for i in range(3)]
        (run / "test_metrics.json").write_text(json.dumps({"cases": cases}))
        row = {k: "" for k in RESULT_FIELDS} | {
            "task": cell.task, "method": cell.method, "strong": cell.strong, "weak": cell.weak,
            "repeat": cell.repeat, "seed": cell.seed, "test_dice": dice, "best_epoch": 0, "epochs": 1,
            "run_dir": str(run.relative_to(out)),
        }  # fmt: skip
        if in_csv:
            append_result(out / "results.csv", row)
        else:  # finished just before an interruption: only its result.json
            (run / "result.json").write_text(json.dumps(row))

    out.mkdir()
    for cell in curve_cells(config):
        finish(cell, curve_values[cell.strong][cell.repeat])
    done_main = main_cells(config, {"lung": {"splits": [(3, 37)]}}, done={c.key for c in curve_cells(config)})
    finish(done_main[0], 0.5)  # lung/msdn_bal/3-37/r0, in results.csv
    finish(done_main[1], 0.5, in_csv=False)  # lung/msdn_bal/3-37/r1, result.json only
    assert main(["experiment", "--preset", "cpu_v2", "--task", "lung=x.json", "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "learning curve: 12 runs, 12 done" in lines[1] and "3, 37" in lines[2]
    listed = [ln for ln in lines if not ln.startswith("#")]
    # 8 + 8 main runs at 3-37, 10 ablations x 3, 8 U-Net runs at 40-0; done: 3 + 3 curve runs, 2 MSDN
    assert "54 runs, 8 done" in lines[2] and len(listed) == 54 - 8
    assert listed[:3] == ["lung/msdn_bal/3-37/r2", "lung/unet/3-37/r3", "lung/msdn_bal/3-37/r3"]
    assert listed[-8:-5] == [f"lung/unet_tight/3-37/r{r}" for r in range(3)]
    assert listed[-5:] == [f"lung/unet/40-0/r{r}" for r in range(3, 8)]
    assert not (out / "selection.json").exists() and len(read_results(out / "results.csv")) == 13  # nothing written
