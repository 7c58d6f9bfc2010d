"""``msdn evaluate``: Dice, IoU and HD95 (mm) per case and class of a checkpoint on a manifest split.

See ``model_export.evaluation`` for exactly what is measured (``--region target`` / ``full``).

``msdn evaluate --full-series --model M.onnx --manifest B/manifest.json --out DIR``: whole-series
nodule detection (FROC, CPM) and segmentation of an ONNX model through the service pipeline, in modes
``slices``, ``proposals`` and reference-box-prompted ``boxes`` (``model_export.full_series``); writes
``DIR/report.json``, ``table.md``, ``results.csv``, ``per_nodule.csv`` and ``froc.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="checkpoint (.pt) to evaluate (not with --full-series)")
    parser.add_argument("--manifest", required=True)
    parser.add_argument(
        "--full-series", action="store_true", help="whole-series detection + segmentation of an ONNX --model"
    )
    parser.add_argument("--model", help="--full-series: the ONNX model")
    parser.add_argument("--out", help="--full-series: output folder")
    parser.add_argument(
        "--modes", default="slices,proposals,boxes", help="--full-series: comma-separated modes (default: all three)"
    )
    parser.add_argument("--limit", type=int, default=None, help="--full-series: first N series only")
    parser.add_argument("--threads", type=int, default=0, help="--full-series: ONNX Runtime intra-op threads")
    parser.add_argument(
        "--froc-threshold",
        type=float,
        default=0.01,
        help="--full-series: lowest detection score made a proposal (FROC); the operating point stays the default",
    )
    parser.add_argument(
        "--operating-threshold",
        type=float,
        default=None,
        help="--full-series: proposals operating point (default: the model card's calibrated threshold, else 0.5)",
    )
    parser.add_argument("--split", choices=("train", "val", "test"), default="test")
    parser.add_argument("--region", choices=("target", "full"), default="target")
    parser.add_argument("--margin", type=int, default=8, help="in-plane margin around the target (pixels)")
    parser.add_argument("--z-margin", type=int, default=2, help="slices above/below the target")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", dest="json_out", default=None, help="also write the result as JSON here")
    parser.add_argument("--quiet", action="store_true", help="print only the means")


def run(args: argparse.Namespace) -> int:
    if args.full_series:
        return run_full_series(args)
    if not args.checkpoint:
        sys.stderr.write("msdn evaluate: error: --checkpoint is required (or --full-series with --model)\n")
        return 2
    from model_export.checkpoint import CheckpointError
    from model_export.data.manifest import ManifestError, load_manifest
    from model_export.evaluation import evaluate_checkpoint, format_result

    try:
        manifest = load_manifest(args.manifest)
        cases = [c for c in manifest.split(args.split) if c.strong]
        if not cases:
            raise ValueError(f"split {args.split!r} has no case with a mask to evaluate")
        result = evaluate_checkpoint(
            args.checkpoint,
            cases,
            region=args.region,
            margin=args.margin,
            z_margin=args.z_margin,
            device=args.device,
            batch_size=args.batch_size,
        )
    except (ValueError, ManifestError, CheckpointError) as exc:
        sys.stderr.write(f"msdn evaluate: error: {exc}\n")
        return 2
    sys.stdout.write(format_result(result, per_case=not args.quiet) + "\n")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(_finite(result.summary()), indent=1))
    return 0 if math.isfinite(result.mean_dice) else 1


def run_full_series(args: argparse.Namespace) -> int:
    """``--full-series``: write the report, tables, CSVs and the FROC plot to ``--out``."""
    from model_export.full_series import MODES, evaluate_full_series, load_cases, write_outputs

    if not args.model or not args.out:
        sys.stderr.write("msdn evaluate: error: --full-series needs --model and --out\n")
        return 2
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = sorted(set(modes) - set(MODES))
    if unknown or not modes:
        sys.stderr.write(f"msdn evaluate: error: --modes must be among {list(MODES)}, got {args.modes!r}\n")
        return 2
    try:
        cases = load_cases(args.manifest, split=args.split, limit=args.limit)
        report = evaluate_full_series(
            args.model,
            cases,
            modes=modes,
            threads=args.threads,
            froc_threshold=args.froc_threshold,
            operating_threshold=args.operating_threshold,
        )
    except (ValueError, OSError) as exc:
        sys.stderr.write(f"msdn evaluate: error: {exc}\n")
        return 2
    table = write_outputs(report, args.out)
    sys.stdout.write(table)
    return 0


def _finite(obj):
    """NaN and infinite floats -> None, recursively (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
