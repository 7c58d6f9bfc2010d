"""Protocol-2 report: learning curve and selection, means with 95% CIs, paired differences, mask counts, plot.

Files written into the experiment folder:

- ``table.md``: everything below as Markdown;
- ``curve.csv``: the learning curve (gap to all-strong, paired SEs, selected splits);
- ``summary.csv``: per (task, method, split) repeats, mean test Dice and CI half-width (%), mean mask
  presentations (to the best epoch and in all), mean epochs, share of runs stopped by early stopping;
- ``paired.csv``: per split and method, the paired difference to the baseline (``unet``);
- ``per_case.csv``: every run's per-case test Dice (the pairs behind ``paired.csv``);
- ``dice_vs_strong.png``: Dice against the number of strong cases with 95% CI bands.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model_export.experiment.paired import comparison_rows, index_runs
from model_export.experiment.protocol import ExperimentConfig
from model_export.experiment.report import summarise
from model_export.experiment.v2 import AblationSpec, CurveSpec, curve_analysis, select_splits


def _fmt(v: Any, digits: int = 2) -> str:
    if isinstance(v, float):
        if not math.isfinite(v):
            return "n/a"
        return f"{v:.{digits}f}"
    return str(v)


def _p(v: float) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{v:.2g}" if v >= 0.001 else f"{v:.1e}"


def _mean(values: Sequence[float]) -> float:
    vals = [float(v) for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))]
    return sum(vals) / len(vals) if vals else math.nan


def method_order(config: ExperimentConfig, methods: Sequence[str]) -> list[str]:
    """Curve method, main methods, ablations, then anything else, each once."""
    curve = CurveSpec.from_dict(config.curve) if config.curve else None
    abl = AblationSpec.from_dict(config.ablations)
    wanted = ([curve.method] if curve else []) + list(config.methods) + list(abl.methods)
    order: list[str] = []
    for m in wanted + sorted(set(methods)):
        if m in methods and m not in order:
            order.append(m)
    return order


def extended_summary(rows: Sequence[dict[str, Any]], config: ExperimentConfig) -> list[dict[str, Any]]:
    """``report.summarise`` rows plus mask presentations, epochs and the share stopped early."""
    base = summarise(rows)
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["task"], r["method"], int(r["strong"]), int(r["weak"])), []).append(r)
    out = []
    for s in base:
        g = groups[(s["task"], s["method"], s["strong"], s["weak"])]
        stopped = [r["stopped_early"] for r in g if r.get("stopped_early") is not None]
        out.append(
            {
                **s,
                "label": config.arm(s["method"]).display,
                "mask_rows_best": _mean([r.get("mask_rows_best") for r in g]),
                "mask_rows": _mean([r.get("mask_rows") for r in g]),
                "epochs": _mean([r.get("epochs") for r in g]),
                "best_epoch": _mean([r.get("best_epoch") for r in g]),
                "stopped_early_share": (sum(stopped) / len(stopped)) if stopped else math.nan,
            }
        )
    return out


def _write_csv(path: Path, rows: Sequence[dict[str, Any]], fields: Sequence[str] | None = None) -> None:
    fields = list(fields or (rows[0].keys() if rows else []))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (round(v, 5) if isinstance(v, float) else v) for k, v in r.items() if k in fields})


def plot_v2(summary: Sequence[dict[str, Any]], config: ExperimentConfig, path: Path) -> None:
    """Dice (%) against strong cases: lines with 95% CI bands for rows run at 2+ splits, points otherwise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    tasks = sorted({s["task"] for s in summary})
    fig, axes = plt.subplots(1, len(tasks), figsize=(7.5 * len(tasks), 5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = [s for s in summary if s["task"] == task and math.isfinite(s["mean_dice_pct"])]
        singles = []
        for method in method_order(config, [s["method"] for s in rows]):
            pts = sorted((s["strong"], s["mean_dice_pct"], s["ci95_pct"]) for s in rows if s["method"] == method)
            label = config.arm(method).display
            if len(pts) < 2:
                singles.append((method, label, pts))
                continue
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            hs = [p[2] if math.isfinite(p[2]) else 0.0 for p in pts]
            (line,) = ax.plot(xs, ys, marker="o", label=label)
            ax.fill_between(
                xs,
                [max(y - h, 0.0) for y, h in zip(ys, hs, strict=True)],
                [min(y + h, 100.0) for y, h in zip(ys, hs, strict=True)],
                color=line.get_color(),
                alpha=0.12,
            )
        for i, (_, label, pts) in enumerate(singles):
            for x, y, h in pts:
                off = (i - (len(singles) - 1) / 2) * 0.12
                ax.errorbar(
                    x * (1 + off * 0.5),
                    y,
                    yerr=h if math.isfinite(h) else None,
                    fmt="s",
                    ms=4,
                    capsize=2,
                    label=label,
                )
        ax.set_xscale("log")
        xs_all = sorted({s["strong"] for s in rows})
        ax.set_xticks(xs_all)
        ax.set_xticklabels([str(x) for x in xs_all])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(f"{task}: mean test Dice, 95% CI")
        ax.set_xlabel("strong (mask) training cases; the rest have boxes only")
        ax.set_ylabel("test Dice (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report_v2(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, *, config: ExperimentConfig, baseline: str = "unet"
) -> dict[str, Path]:
    """Write the protocol-2 report (see module docstring); ``rows`` carry ``per_case`` (``runner.with_per_case``)."""
    out = Path(out_dir)
    curve = CurveSpec.from_dict(config.curve)
    index = index_runs(rows)
    summary = extended_summary(rows, config)
    methods = method_order(config, [r["method"] for r in rows])
    paired = comparison_rows(index, baseline=baseline, methods=methods)
    md = ["# Experiment results (protocol 2)", ""]
    if config.description:
        md += [config.description, ""]
    paths = {
        "table": out / "table.md",
        "curve": out / "curve.csv",
        "summary": out / "summary.csv",
        "paired": out / "paired.csv",
        "per_case": out / "per_case.csv",
        "plot": out / "dice_vs_strong.png",
    }
    curve_rows = []
    for task in config.tasks:
        analysis = curve_analysis(index, task, curve)
        sel = select_splits(analysis, curve)
        chosen = {tuple(s) for s in sel["splits"]}
        for r in analysis:
            curve_rows.append({**r, "selected": (r["strong"], r["weak"]) in chosen, "fallback": sel["fallback"]})
        md += [
            f"## {task.name}: learning curve ({config.arm(curve.method).display})",
            "",
            f"Gap = all-strong minus this split, paired by repeat seed and test case over the repeats both "
            f"have (repeats = runs at this split); SE of the per-repeat mean difference and of the pairs "
            f"(unit `{curve.unit}` decides). Selected: gap >= {curve.min_se:g} SE, the {curve.max_splits} "
            f"scarcest.",
            "",
            "| strong-weak | repeats | Dice % | gap (pts) | SE repeat | SE pair | gap/SE | selected |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in analysis:
            sel_mark = "yes" if (r["strong"], r["weak"]) in chosen else ""
            if sel_mark and sel["fallback"]:
                sel_mark = "fallback (none passed)"
            elif sel_mark and sel.get("forced"):
                sel_mark = "yes (set by curve.select)"
            md.append(
                f"| {r['strong']}-{r['weak']} | {r['repeats']} | {_fmt(r['mean_dice_pct'])} | {_fmt(r['gap_pct'])} "
                f"| {_fmt(r['se_repeat_pct'])} | {_fmt(r['se_pair_pct'])} | {_fmt(r['gap_over_se'], 1)} | {sel_mark} |"
            )
        md.append("")
    for task in sorted({s["task"] for s in summary}):
        rows_t = [s for s in summary if s["task"] == task]
        splits = sorted({(s["strong"], s["weak"]) for s in rows_t}, key=lambda sw: -sw[0])
        by = {(s["method"], s["strong"], s["weak"]): s for s in rows_t}
        md += [
            f"## {task}: mean test Dice (%) ± 95% CI half-width (repeats)",
            "",
            "| Method | " + " | ".join(f"{s}-{w}" for s, w in splits) + " |",
            "|---|" + "---|" * len(splits),
        ]
        for m in method_order(config, [s["method"] for s in rows_t]):
            cells = []
            for sw in splits:
                s = by.get((m, *sw))
                if s is None:
                    cells.append("-")
                else:
                    half = f"±{s['ci95_pct']:.2f}" if math.isfinite(s["ci95_pct"]) else ""
                    cells.append(f"{_fmt(s['mean_dice_pct'])}{half} ({s['n']})")
            md.append(f"| {config.arm(m).display} | " + " | ".join(cells) + " |")
        md += [
            "",
            f"## {task}: mask presentations and convergence (means over repeats)",
            "",
            "Mask rows = patches that reached the segmentation loss (pseudo-masks included), up to the best "
            "epoch / in the whole run; stopped = share of runs ended by early stopping (the rest hit the "
            "epoch cap).",
            "",
            "| Method | split | mask rows to best | mask rows total | best epoch | epochs | stopped |",
            "|---|---|---|---|---|---|---|",
        ]
        for m in method_order(config, [s["method"] for s in rows_t]):
            for sw in splits:
                s = by.get((m, *sw))
                if s is None:
                    continue
                md.append(
                    f"| {config.arm(m).display} | {sw[0]}-{sw[1]} | {_fmt(s['mask_rows_best'], 0)} | "
                    f"{_fmt(s['mask_rows'], 0)} | {_fmt(s['best_epoch'], 1)} | {_fmt(s['epochs'], 1)} | "
                    f"{_fmt(s['stopped_early_share'])} |"
                )
        md.append("")
        prs = [p for p in paired if p["task"] == task]
        if prs:
            md += [
                f"## {task}: paired difference to {config.arm(baseline).display} (Dice points)",
                "",
                "Per repeat: mean over the test cases of the paired difference, then mean, 95% t CI, paired "
                "t-test and Wilcoxon signed-rank over the repeats (the conclusions rest on these). Per pair: "
                "all (repeat, test case) pairs (CI too narrow when training noise dominates; shown for "
                "reference).",
                "",
                "| split | Method | repeats | diff | 95% CI | t p | Wilcoxon p | pairs | pair CI | pair t p "
                "| pair Wilcoxon p |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for p in sorted(prs, key=lambda p: (p["strong"], methods.index(p["method"]))):
                md.append(
                    f"| {p['strong']}-{p['weak']} | {config.arm(p['method']).display} | {p['repeats']} | "
                    f"{p['mean_diff_pct']:+.2f} | [{_fmt(p['ci_low_pct'])}, {_fmt(p['ci_high_pct'])}] | "
                    f"{_p(p['t_p'])} | {_p(p['wilcoxon_p'])} | {p['pairs']} | "
                    f"[{_fmt(p['pair_ci_low_pct'])}, {_fmt(p['pair_ci_high_pct'])}] | {_p(p['pair_t_p'])} | "
                    f"{_p(p['pair_wilcoxon_p'])} |"
                )
            md.append("")
    paths["table"].write_text("\n".join(md))
    _write_csv(paths["curve"], curve_rows)
    _write_csv(paths["summary"], summary)
    _write_csv(paths["paired"], paired)
    per_case = [
        {
            "task": r["task"],
            "method": r["method"],
            "strong": r["strong"],
            "weak": r["weak"],
            "repeat": r["repeat"],
            "case_id": c,
            "dice": d,
        }
        for r in rows
        for c, d in sorted((r.get("per_case") or {}).items())
    ]
    _write_csv(paths["per_case"], per_case, ["task", "method", "strong", "weak", "repeat", "case_id", "dice"])
    if summary:
        plot_v2(summary, config, paths["plot"])
    return paths
