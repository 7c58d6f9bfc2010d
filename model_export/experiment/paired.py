"""Paired comparisons of two rows of an experiment (same repeat seed, same test cases).

Within a repeat every method trains on the same strong/weak case assignment (seeded by the repeat) and
is tested on the same test cases, so two methods can be compared pair by pair:

- per (repeat, test case): ``dice_a - dice_b`` of that case in that repeat; many pairs, but the cases of
  one repeat share a trained model, so these pairs are not independent (a CI over them ignores the
  training noise shared within a repeat and is too narrow when that noise dominates);
- per repeat: the mean over the test cases of the paired difference; one value per repeat, independent
  across repeats - the conservative unit for the t-test and CI.

Both are reported; conclusions rest on the per-repeat test.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from model_export.experiment.stats import PairedTest, paired_test

#: per-case test Dice of one run: case id -> Dice (mean over classes)
PerCase = dict[str, float]


def per_case_dice(metrics: dict[str, Any]) -> PerCase:
    """Case id -> mean Dice over the classes present, from an ``EvaluationResult.summary()`` dict."""
    out: PerCase = {}
    for case in metrics.get("cases", []):
        vals = [float(v) for v in case.get("dice", []) if v is not None and math.isfinite(float(v))]
        if vals:
            out[str(case["case_id"])] = sum(vals) / len(vals)
    return out


def load_per_case(run_dir: str | Path) -> PerCase:
    """Per-case test Dice of a finished run (its ``test_metrics.json``; missing file: empty)."""
    path = Path(run_dir) / "test_metrics.json"
    if not path.is_file():
        return {}
    return per_case_dice(json.loads(path.read_text()))


def index_runs(rows: Iterable[dict[str, Any]]) -> dict[tuple[str, str, int, int], dict[int, PerCase]]:
    """``(task, method, strong, weak) -> {repeat: per-case Dice}`` for rows carrying ``per_case``."""
    out: dict[tuple[str, str, int, int], dict[int, PerCase]] = {}
    for r in rows:
        pc = r.get("per_case")
        if pc:
            out.setdefault((r["task"], r["method"], int(r["strong"]), int(r["weak"])), {})[int(r["repeat"])] = pc
    return out


def paired_differences(a: dict[int, PerCase], b: dict[int, PerCase]) -> tuple[list[float], list[float], list[int]]:
    """Differences ``a - b`` per (repeat, case) and per repeat, over the repeats and cases both have.

    Returns:
        (pair differences, per-repeat mean differences, the repeats used).
    """
    pairs: list[float] = []
    per_repeat: list[float] = []
    repeats = sorted(set(a) & set(b))
    used = []
    for r in repeats:
        common = sorted(set(a[r]) & set(b[r]))
        if not common:
            continue
        d = [a[r][c] - b[r][c] for c in common]
        pairs += d
        per_repeat.append(sum(d) / len(d))
        used.append(r)
    return pairs, per_repeat, used


def compare(
    a: dict[int, PerCase], b: dict[int, PerCase], confidence: float = 0.95
) -> dict[str, PairedTest | list[int]] | None:
    """Paired tests of ``a - b`` at both levels; None when the two share no repeat."""
    pairs, per_repeat, used = paired_differences(a, b)
    if not per_repeat:
        return None
    return {"pairs": paired_test(pairs, confidence), "repeats": paired_test(per_repeat, confidence), "used": used}


def comparison_rows(
    index: dict[tuple[str, str, int, int], dict[int, PerCase]],
    *,
    baseline: str,
    methods: Sequence[str],
    confidence: float = 0.95,
) -> list[dict[str, Any]]:
    """One row per (task, split, method != baseline) that shares repeats with the baseline at that split.

    Values are in Dice percentage points.
    """
    out = []
    for (task, method, strong, weak), runs in sorted(index.items(), key=lambda kv: (kv[0][0], kv[0][2], kv[0][1])):
        if method == baseline or method not in methods:
            continue
        base = index.get((task, baseline, strong, weak))
        if not base:
            continue
        res = compare(runs, base, confidence)
        if res is None:
            continue
        rep, pair = res["repeats"], res["pairs"]
        out.append(
            {
                "task": task,
                "strong": strong,
                "weak": weak,
                "method": method,
                "baseline": baseline,
                "repeats": rep.n,
                "pairs": pair.n,
                "mean_diff_pct": 100 * rep.mean,
                "ci_low_pct": 100 * rep.ci_low,
                "ci_high_pct": 100 * rep.ci_high,
                "t_p": rep.t_p,
                "wilcoxon_p": rep.wilcoxon_p,
                "pair_ci_low_pct": 100 * pair.ci_low,
                "pair_ci_high_pct": 100 * pair.ci_high,
                "pair_t_p": pair.t_p,
                "pair_wilcoxon_p": pair.wilcoxon_p,
            }
        )
    return out
