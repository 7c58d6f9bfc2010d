"""``msdn calibrate MODEL.onnx --manifest M``: choose the proposal score threshold on validation series.

Not the int8 calibration of ``msdn export --int8``: this picks the detector score threshold of the
service's proposals mode (``model_export.proposal_threshold``: the lowest score with at most
``--fp-per-scan`` false-positive components per validation scan) and stores it in the model card
(``detection.score_threshold`` with the validation numbers, embedded and in the sidecar; matching
fp16 / int8 variants too). The service then uses it as its default ``MSDN_PROPOSAL_SCORE_THRESHOLD``
and answers ``mode=auto`` with proposals.

Example::

    msdn calibrate models/default.onnx --manifest build/default-model/data/manifest.json --split val

Exit status: 0 calibrated (card written unless ``--dry-run``), 1 no threshold (no candidate, or the
target unreachable: the card is left as it was), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="the fp32 ONNX export (with detection outputs)")
    parser.add_argument("--manifest", required=True, help="data manifest with masks (msdn synth writes one)")
    parser.add_argument("--split", default="val", help="manifest split of the calibration series (default val)")
    parser.add_argument(
        "--fp-per-scan", type=float, default=1.0, help="false-positive components per scan allowed (default 1.0)"
    )
    parser.add_argument("--floor", type=float, default=0.01, help="detector score candidates are collected down to")
    parser.add_argument("--max-candidates", type=int, default=20, help="3D candidates segmented per series")
    parser.add_argument(
        "--confirmation",
        choices=["none", "segmentation"],
        default="none",
        help="component score the threshold is chosen on (recorded in the card): the detection score, or "
        "detection x the component's mean whole-slice foreground probability (default none)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "int8"],
        default="fp32",
        help="fp32: the model (its card and its variants'); int8: run the int8 variant <model>.int8.onnx and "
        "store the threshold of its own scores in its card only (the service then may serve it under auto)",
    )
    parser.add_argument("--limit", type=int, default=None, help="first N series only")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--dry-run", action="store_true", help="print the choice, leave the card as it is")
    parser.add_argument("--json", dest="json_out", type=Path, default=None, help="also write the outcome here")


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from model_export.full_series import load_cases
    from model_export.proposal_threshold import calibrate, write_operating_point
    from msdn_core.errors import MsdnError
    from msdn_core.onnx_model import ModelFileError

    try:
        cases = load_cases(args.manifest, split=args.split, limit=args.limit)
        result = calibrate(
            args.model,
            cases,
            split=args.split,
            fp_per_scan_target=args.fp_per_scan,
            floor=args.floor,
            max_candidates=args.max_candidates,
            threads=args.threads,
            manifest=str(args.manifest),
            confirmation=args.confirmation,
            precision=args.precision,
        )
    except (ValueError, OSError, MsdnError) as exc:
        sys.stderr.write(f"msdn calibrate: error: {exc}\n")
        return 2
    choice = result.choice
    out = {
        "choice": asdict(choice),
        "series": [asdict(s) for s in result.series],
        "detection": asdict(result.point) if result.point else None,
    }
    if choice.score_threshold is None:
        sys.stdout.write(f"no proposal threshold: {choice.reason}; {args.model} left uncalibrated\n")
    else:
        c = result.point.calibration
        dice = "-" if c.mean_series_dice is None else f"{c.mean_series_dice:.3f}"
        sys.stdout.write(
            f"proposal score threshold {choice.score_threshold:.6g} on {c.series} {args.split} series "
            f"({c.nodules} nodules), run at it: {c.fp_per_scan:.2f} FP components per scan "
            f"(target {c.fp_per_scan_target:g}; floor runs {choice.fp_per_scan:.2f}), sensitivity "
            f"{c.sensitivity:.3f}, mean whole-series Dice {dice} (slice boxes linked down to "
            f"{c.extend_threshold:g}; component score: {result.point.confirmation})\n"
        )
        if not args.dry_run:
            try:
                files = write_operating_point(
                    args.model, result.point, variant=None if args.precision == "fp32" else args.precision
                )
            except ModelFileError as exc:
                sys.stderr.write(f"msdn calibrate: error: {exc}\n")
                return 2
            out["written"] = [str(p) for p in files["written"]]
            out["skipped"] = [str(p) for p in files["skipped"]]
            sys.stdout.write("written: " + ", ".join(out["written"]) + "\n")
            for p in files["skipped"]:
                sys.stdout.write(f"left as it was (another checkpoint): {p}\n")
    if args.json_out:
        args.json_out.write_text(json.dumps(out, indent=1) + "\n")
    return 0 if choice.score_threshold is not None else 1
