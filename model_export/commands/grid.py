"""``msdn grid MODEL.onnx``: write the model grid (``input.spacing_mm``, ``input.orientation``) into a
model's card, for a model exported before the card had them.

A model trained before the model grid (``msdn_core.grid``) was trained on its images as they were
stored; its card names no grid and the service uses every input on its own grid. When the training
images are known, this records what they were, so the service brings every input onto that grid::

    msdn grid models/default.onnx --spacing auto --manifest build/default-model/data/manifest.json
    msdn grid models/default.onnx --spacing 1.2539 --orientation LPS

``--spacing auto`` is the median in-plane voxel size of the manifest's training images (the same
rule as ``msdn train --spacing auto``, ``model_export.data.grid_plan``). The fp32 file and its variants
from the same checkpoint are rewritten (embedded card and sidecar; the graph is untouched).

Exit status: 0 written (or printed with ``--dry-run``), 2 bad input.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", type=Path, help="the fp32 ONNX export")
    parser.add_argument("--spacing", required=True, metavar="auto|none|SY,SX", help="model grid voxel size in mm")
    parser.add_argument("--orientation", default="LPS", metavar="LPS|none", help="model grid axes (default LPS)")
    parser.add_argument("--manifest", help="training manifest (for --spacing auto: its train split)")
    parser.add_argument("--dry-run", action="store_true", help="print the grid, write nothing")


def run(args: argparse.Namespace) -> int:
    from model_export.card_update import report_update, update_cards
    from model_export.data.grid_plan import parse_orientation_option, parse_spacing_option, plan_grid
    from model_export.data.manifest import ManifestError, load_manifest
    from msdn_core.errors import MsdnError
    from msdn_core.onnx_model import ModelFileError

    try:
        spacing = parse_spacing_option(args.spacing)
        orientation = parse_orientation_option(args.orientation)
        if spacing == "auto":
            if not args.manifest:
                raise ValueError("--spacing auto needs --manifest (the training images)")
            cases = load_manifest(args.manifest).split("train")
            if not cases:
                raise ValueError(f"{args.manifest} has no train split to take the spacing from")
            grid = plan_grid(cases, spacing="auto", orientation=orientation)
        else:
            grid = plan_grid([], spacing=spacing, orientation=orientation)
        spec = grid.describe()
        sys.stdout.write(json.dumps(spec) + "\n")
        if args.dry_run:
            return 0

        def change(card):
            return dataclasses.replace(
                card,
                input=dataclasses.replace(card.input, spacing_mm=spec["spacing_mm"], orientation=spec["orientation"]),
            )

        done = update_cards(args.model, change)
    except (ValueError, ManifestError, ModelFileError, MsdnError) as exc:
        sys.stderr.write(f"msdn grid: error: {exc}\n")
        return 2
    report_update(done, sys.stdout)
    return 0
