"""``msdn synth``: write the synthetic lung-nodule / cochlea CT benchmark (volumes, masks, manifest).

Examples::

    msdn synth --task lung -o data/full --size 256           # v5: full-size series, 60/10/40, 80-160 slices
    msdn synth --task lung -o data/lung --version 4          # v4: paper split 160/80/80, 192x192x32
    msdn synth --task cochlea -o data/cochlea --seed 1       # paper split 66/40/40, 192x192x24
    msdn synth --task lung -o /tmp/tiny --cases 6 --size 128 --slices 16
    msdn synth --task lung -o data/lung_dicom --split 10/5/5 --dicom
"""

from __future__ import annotations

import argparse
import os
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", choices=("lung", "cochlea"), required=True, help="which benchmark to draw")
    parser.add_argument("-o", "--out", required=True, help="output folder (manifest.json, images/ or dicom/, masks/)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--cases", type=int, help="number of cases, split in the paper's proportions")
    group.add_argument("--split", help="cases per split TRAIN/VAL/TEST (default: lung 160/80/80, cochlea 66/40/40)")
    parser.add_argument("--seed", type=int, default=0, help="data set seed (default 0)")
    parser.add_argument(
        "--size", type=int, help="in-plane pixels Y = X, >= 128 (default 192; full-size lung v5: 512, 256 for CPU runs)"
    )
    parser.add_argument(
        "--slices",
        type=int,
        help="axial slices (default lung 32, cochlea 24; full-size lung v5: 80-160 drawn per case)",
    )
    parser.add_argument(
        "--version",
        type=int,
        choices=(4, 5),
        default=5,
        help="generator version: 5 (default) full-size lung series with 0-4 nodules, 4 lung cut-outs around one nodule",
    )
    parser.add_argument("--dicom", action="store_true", help="write images as CT DICOM series folders")
    parser.add_argument("--boxes", action="store_true", help="also store per-slice boxes derived from the masks")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes (default: up to 4)")


def run(args: argparse.Namespace) -> int:
    from model_export.data.synth import generate, parse_split

    try:
        num_cases = parse_split(args.split) if args.split else args.cases
        path = generate(
            args.task,
            args.out,
            num_cases=num_cases,
            seed=args.seed,
            size=args.size,
            slices=args.slices,
            dicom=args.dicom,
            boxes=args.boxes,
            workers=args.workers,
            version=args.version,
        )
    except ValueError as exc:
        sys.stderr.write(f"msdn synth: error: {exc}\n")
        return 2
    sys.stdout.write(f"{path}\n")
    return 0
