"""Paired statistics: tests against hand-computed values, pairing by repeat and test case."""

from __future__ import annotations

import math

import pytest

from model_export.experiment.paired import compare, comparison_rows, index_runs, paired_differences, per_case_dice
from model_export.experiment.stats import paired_test


def test_paired_test_by_hand():
    d = [0.02, 0.04, 0.06, 0.08]
    res = paired_test(d)
    # mean 0.05, s = sqrt(sum((d - 0.05)^2) / 3) = sqrt(0.002 / 3), se = s / 2
    s = math.sqrt(0.002 / 3)
    assert res.n == 4 and res.mean == pytest.approx(0.05)
    assert res.se == pytest.approx(s / 2)
    # t(0.975, 3) = 3.182446305284263
    assert res.ci_low == pytest.approx(0.05 - 3.182446305284263 * s / 2)
    assert res.ci_high == pytest.approx(0.05 + 3.182446305284263 * s / 2)
    # t = 0.05 / (s / 2) = 3.8729833; df 3 closed form: p = 1 - (2/pi)(u/(1+u^2) + atan u), u = t/sqrt(3)
    assert res.t_p == pytest.approx(0.030466, abs=2e-5)
    # Wilcoxon, n = 4, all positive: W- = 0, exact two-sided p = 2 / 2^4 = 0.125
    assert res.wilcoxon_p == pytest.approx(0.125)


def test_paired_test_edge_cases():
    zero = paired_test([0.0, 0.0, 0.0])
    assert zero.mean == 0 and zero.t_p == 1.0 and math.isnan(zero.wilcoxon_p)
    one = paired_test([0.3])
    assert one.n == 1 and math.isnan(one.se) and math.isnan(one.t_p)
    assert paired_test([0.1, math.nan, 0.3]).n == 2
    with pytest.raises(ValueError):
        paired_test([])


def test_per_case_dice_skips_nan_classes():
    metrics = {"cases": [{"case_id": "a", "dice": [0.5, 0.7]}, {"case_id": "b", "dice": [math.nan, 0.4]}]}
    pc = per_case_dice(metrics)
    assert pc == {"a": pytest.approx(0.6), "b": pytest.approx(0.4)}
    assert per_case_dice({"cases": [{"case_id": "c", "dice": [math.nan]}]}) == {}


def test_paired_differences_by_repeat_and_case():
    a = {0: {"x": 0.8, "y": 0.6}, 1: {"x": 0.9, "y": 0.5, "z": 0.1}, 3: {"x": 0.2}}
    b = {0: {"x": 0.7, "y": 0.7}, 1: {"x": 0.6, "y": 0.5}, 2: {"x": 0.5}}
    pairs, per_repeat, used = paired_differences(a, b)
    # repeat 0: +0.1, -0.1; repeat 1: +0.3, 0.0 (z only in a); repeats 2 and 3 unpaired
    assert pairs == pytest.approx([0.1, -0.1, 0.3, 0.0])
    assert per_repeat == pytest.approx([0.0, 0.15])
    assert used == [0, 1]
    res = compare(a, b)
    assert res["repeats"].n == 2 and res["pairs"].n == 4
    assert compare({0: {"x": 1.0}}, {1: {"x": 1.0}}) is None


def test_comparison_rows_against_baseline():
    rows = []
    for r, (u, m) in enumerate([(0.50, 0.55), (0.60, 0.62), (0.40, 0.49)]):
        rows.append({"task": "lung", "method": "unet", "strong": 3, "weak": 37, "repeat": r, "per_case": {"c": u}})
        rows.append({"task": "lung", "method": "msdn", "strong": 3, "weak": 37, "repeat": r, "per_case": {"c": m}})
    rows.append({"task": "lung", "method": "msdn", "strong": 5, "weak": 35, "repeat": 0, "per_case": {"c": 0.5}})
    out = comparison_rows(index_runs(rows), baseline="unet", methods=["unet", "msdn"])
    assert len(out) == 1  # no U-Net at 5-35
    row = out[0]
    assert (row["strong"], row["method"], row["repeats"], row["pairs"]) == (3, "msdn", 3, 3)
    assert row["mean_diff_pct"] == pytest.approx(100 * (0.05 + 0.02 + 0.09) / 3)
    assert row["ci_low_pct"] < row["mean_diff_pct"] < row["ci_high_pct"]
