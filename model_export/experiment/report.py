"""Experiment report: Table 1 as Markdown and CSV (mean test Dice % +- 95% CI half-width), and a plot."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from model_export.experiment.protocol import METHOD_LABELS, METHODS, ExperimentConfig
from model_export.experiment.stats import mean_ci

SUMMARY_FIELDS = ["task", "method", "strong", "weak", "n", "mean_dice_pct", "ci95_pct", "metric"]


def _method_order(methods: Sequence[str]) -> list[str]:
    return sorted(set(methods), key=lambda m: METHODS.index(m) if m in METHODS else len(METHODS))


def summarise(
    rows: Sequence[dict[str, Any]], *, metric: str = "test_dice", confidence: float = 0.95
) -> list[dict[str, Any]]:
    """One row per (task, method, strong, weak): the number of repeats, mean and CI half-width in %."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        key = (r["task"], r["method"], int(r["strong"]), int(r["weak"]))
        v = r.get(metric)
        groups.setdefault(key, [])
        if v is not None and v != "" and math.isfinite(float(v)):
            groups[key].append(float(v))
    out = []
    order = _method_order([k[1] for k in groups])
    for key in sorted(groups, key=lambda k: (k[0], order.index(k[1]), -k[2])):
        values = groups[key]
        if values:
            mean, half = mean_ci(values, confidence)
        else:
            mean, half = math.nan, math.nan
        out.append(
            {
                "task": key[0],
                "method": key[1],
                "strong": key[2],
                "weak": key[3],
                "n": len(values),
                "mean_dice_pct": 100 * mean,
                "ci95_pct": 100 * half,
                "metric": metric,
            }
        )
    return out


def _cell(mean: float, half: float) -> str:
    if not math.isfinite(mean):
        return "n/a"
    return f"{mean:.2f}±{half:.2f}" if math.isfinite(half) else f"{mean:.2f}"


def markdown_table(summary: Sequence[dict[str, Any]]) -> str:
    """Table 1 layout: one table per task, methods as rows, strong-weak splits as columns ("-" = not run)."""
    parts = []
    for task in sorted({s["task"] for s in summary}):
        rows = [s for s in summary if s["task"] == task]
        splits = sorted({(s["strong"], s["weak"]) for s in rows}, key=lambda sw: -sw[0])
        total = {sum(sw) for sw in splits}
        title = f"### {task}: mean test Dice (%) ± 95% CI half-width"
        if len(total) == 1:
            title += f" (strong-weak split, {total.pop()} training cases)"
        lines = [title, "", "| Method | " + " | ".join(f"{s}-{w}" for s, w in splits) + " |"]
        lines.append("|---|" + "---|" * len(splits))
        by = {(s["method"], s["strong"], s["weak"]): s for s in rows}
        for method in _method_order([s["method"] for s in rows]):
            cells = []
            for sw in splits:
                s = by.get((method, *sw))
                cells.append("-" if s is None else _cell(s["mean_dice_pct"], s["ci95_pct"]))
            lines.append(f"| {METHOD_LABELS.get(method, method)} | " + " | ".join(cells) + " |")
        n = sorted({s["n"] for s in rows})
        lines += ["", f"Repeats per cell: {', '.join(map(str, n))}."]
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def write_summary_csv(summary: Sequence[dict[str, Any]], path: Path) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
        writer.writeheader()
        for s in summary:
            writer.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()})


def plot_summary(summary: Sequence[dict[str, Any]], path: Path) -> None:
    """Dice (%) against the number of strong cases, one line per method, CI bands; one panel per task."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({s["task"] for s in summary})
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 4.2), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        rows = [s for s in summary if s["task"] == task and math.isfinite(s["mean_dice_pct"])]
        for method in _method_order([s["method"] for s in rows]):
            pts = sorted((s["strong"], s["mean_dice_pct"], s["ci95_pct"]) for s in rows if s["method"] == method)
            xs = [p[0] for p in pts]
            ys = [p[1] for p in pts]
            hs = [p[2] if math.isfinite(p[2]) else 0.0 for p in pts]
            (line,) = ax.plot(xs, ys, marker="o", label=METHOD_LABELS.get(method, method))
            lo = [max(y - h, 0.0) for y, h in zip(ys, hs, strict=True)]  # bands drawn within the possible range
            hi = [min(y + h, 100.0) for y, h in zip(ys, hs, strict=True)]
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.12)
        ax.set_title(task)
        ax.set_xlabel("strong (mask) training cases; the rest are box-only")
        ax.set_ylabel("mean test Dice (%); bands: 95% CI clipped to 0-100")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    rows: Sequence[dict[str, Any]], out_dir: str | Path, *, config: ExperimentConfig | None = None
) -> dict[str, Path]:
    """Write ``table.md``, ``summary.csv`` and ``dice_vs_strong.png`` (plus the paper-style variants when
    the rows have ``test_dice_paper``) into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise(rows)
    md = ["# Experiment results", ""]
    if config is not None and config.description:
        md += [config.description, ""]
    md += [
        (
            "Test Dice of the checkpoint with the best mean validation Dice (mean over repeats; ± is the "
            "half-width of the two-sided 95% t confidence interval)."
        ),
        "",
        markdown_table(summary),
    ]
    paths = {"table": out / "table.md", "summary": out / "summary.csv", "plot": out / "dice_vs_strong.png"}
    write_summary_csv(summary, paths["summary"])
    plot_summary(summary, paths["plot"])
    has_paper = any(isinstance(r.get("test_dice_paper"), float) and math.isfinite(r["test_dice_paper"]) for r in rows)
    if has_paper:
        paper = summarise(rows, metric="test_dice_paper")
        md += [
            "## Paper-style reporting",
            "",
            "Best test Dice seen at any validation improvement (the paper's protocol; optimistic).",
            "",
            markdown_table(paper),
        ]
        write_summary_csv(paper, out / "summary_paper.csv")
    paths["table"].write_text("\n".join(md))
    return paths
