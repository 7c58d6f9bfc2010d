"""Whole-series quality benchmark: nodule detection (FROC, CPM) and segmentation per mode, fp32 and int8.

One command runs ``msdn evaluate --full-series`` (``model_export.full_series``) on the benchmark split
(``scripts/make_full_series_benchmark.sh``) for the fp32 model and, when it exists, its int8 variant
(``<model>.int8.onnx``, from ``msdn export --int8``), and writes to ``--out``:

* ``table.md``: detection (sensitivity at 1/8..8 FP per scan, CPM), segmentation by size bin and
  position, whole-series Dice and seconds per series, for each precision;
* ``results.csv`` (long format: precision, mode, group, metric, value), ``per_nodule.csv``,
  ``per_series.csv``, ``report.json`` and ``froc.png``.

Seconds per series are the pipeline's wall time (``service.pipeline.segment_image``) on this machine's
CPU, the median over the series (each series is one run); the machine's load is recorded next to them.

Usage::

    scripts/make_full_series_benchmark.sh                     # data/full_series_256 (40 series)
    PYTHONPATH=. .venv/bin/python benchmarks/quality.py --model models/default.onnx \\
        --manifest data/full_series_256/manifest.json --out docs/results/full_series
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

if __name__ == "__main__":  # run as a file: benchmarks/service.py must not shadow the service package
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from model_export.full_series import (  # noqa: E402
    MODES,
    csv_rows,
    evaluate_full_series,
    load_cases,
    markdown_tables,
    plot_froc,
    strip_private,
)

logger = logging.getLogger("benchmarks.quality")


def int8_sibling(model: Path) -> Path:
    """``model.onnx`` -> ``model.int8.onnx``."""
    return model.with_name(model.name[: -len(".onnx")] + ".int8.onnx") if model.name.endswith(".onnx") else model


def timing_table(reports: dict[str, dict]) -> str:
    """Seconds per series (median wall, and median CPU) of each mode and precision."""
    modes = [m for m in MODES if any(m in r["modes"] for r in reports.values())]
    head = " | ".join(f"{m} s/series | {m} CPU s/series" for m in modes)
    lines = [f"| precision | {head} |", "|---" * (2 * len(modes) + 1) + "|"]
    for precision, report in reports.items():
        cells = []
        for m in modes:
            s = report["modes"].get(m) or {}
            for key in ("seconds_per_series", "cpu_seconds_per_series"):
                cells.append("-" if s.get(key) is None else f"{s[key]:.2f}")
        lines.append(f"| {precision} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(dict.fromkeys(k for r in rows for k in r)), restval="")
        writer.writeheader()
        writer.writerows(strip_private({"rows": rows})["rows"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=Path("models/default.onnx"))
    parser.add_argument("--manifest", type=Path, default=Path("data/full_series_256/manifest.json"))
    parser.add_argument("--split", default="test")
    parser.add_argument("--out", type=Path, default=Path("docs/results/full_series"))
    parser.add_argument("--limit", type=int, default=None, help="first N series only")
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--threads", type=int, default=2, help="ONNX Runtime intra-op threads (default 2)")
    parser.add_argument("--int8", choices=("auto", "yes", "no"), default="auto", help="also the int8 variant")
    parser.add_argument("--int8-modes", default="proposals", help="modes run with the int8 variant")
    parser.add_argument(
        "--froc-threshold",
        type=float,
        default=0.01,
        help="lowest detection score made a proposal, to trace the FROC (the operating point stays the "
        "service's: the model card's calibrated threshold, else 0.5; default 0.01)",
    )
    parser.add_argument(
        "--operating-threshold",
        type=float,
        default=None,
        help="proposals operating point (default: the model card's calibrated threshold, else 0.5)",
    )
    parser.add_argument(
        "--max-candidates", type=int, default=10, help="3D candidates segmented per series (default 10)"
    )
    parser.add_argument(
        "--separate-slices",
        action="store_true",
        help="run slices mode on its own instead of taking it from the proposals run's whole-slice pass",
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="JSON-lines cache of finished series (default OUT/series.jsonl): a stopped run resumes",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    cases = load_cases(args.manifest, split=args.split, limit=args.limit)
    variants = {"fp32": (args.model, [m for m in args.modes.split(",") if m])}
    int8 = int8_sibling(args.model)
    if args.int8 == "yes" or (args.int8 == "auto" and int8.is_file()):
        variants["int8"] = (int8, [m for m in args.int8_modes.split(",") if m])
    reports: dict[str, dict] = {}
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    for precision, (path, modes) in variants.items():
        logger.info("%s: %s on %d series, modes %s", precision, path, len(cases), modes)
        cache = args.cache or (args.out / "series.jsonl")
        reports[precision] = evaluate_full_series(
            path,
            cases,
            modes=modes,
            threads=args.threads,
            cache=cache,
            shared_pass=not args.separate_slices,
            froc_threshold=args.froc_threshold,
            max_candidates=args.max_candidates,
            operating_threshold=args.operating_threshold,
        )
    machine = {
        "cpus": os.cpu_count(),
        "processor": platform.processor() or platform.machine(),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in os.getloadavg()],
        "threads": args.threads,
        "wall_s": round(time.perf_counter() - t0, 1),
    }

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    parts = [f"Benchmark: {args.manifest} ({len(cases)} series, split {args.split}); machine: {machine}\n"]
    for precision, report in reports.items():
        m = report["model"]
        parts.append(f"## {precision}: {m['name']} {m['version']} (sha256 {m['sha256'][:12]}...)\n")
        op = report["operating_threshold"].get("proposals")
        if op is not None and "proposals" in report["modes"]:
            parts.append(f"proposals operating threshold {op:.4g} ({report['operating_threshold_source']})\n")
        parts.append(markdown_tables(report))
    parts.append("## Seconds per series (CPU, median)\n")
    parts.append(timing_table(reports))
    table = "\n".join(parts)
    (out / "table.md").write_text(table)
    rows = [dict(precision=p, **row) for p, r in reports.items() for row in csv_rows(r)]
    write_csv(out / "results.csv", rows)
    write_csv(out / "per_nodule.csv", [dict(precision=p, **row) for p, r in reports.items() for row in r["per_nodule"]])
    write_csv(out / "per_series.csv", [dict(precision=p, **row) for p, r in reports.items() for row in r["per_series"]])
    full = {
        "manifest": str(args.manifest),
        "series": [c.id for c in cases],
        "machine": machine,
        "reports": {p: strip_private(r) for p, r in reports.items()},
    }
    (out / "report.json").write_text(json.dumps(full, indent=1) + "\n")
    fp32 = reports["fp32"]
    plot_froc(fp32, out / "froc.png", title=f"{fp32['model']['name']} {fp32['model']['version']}, {len(cases)} series")
    sys.stdout.write(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
