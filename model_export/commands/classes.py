"""``msdn classes MODEL.onnx --codes FILE.json``: write what each class means (DICOM SEG segment
semantics) into an exported model's card.

The codes file is keyed by class name (or value); each entry names the segment category and type
(DICOM CID 7150 / 7151: SNOMED CT for findings), optionally an anatomic region and a display colour::

    {"nodule": {"category": {"code": "49755003", "scheme": "SCT", "meaning": "Morphologically abnormal structure"},
                "type": {"code": "27925004", "scheme": "SCT", "meaning": "Nodule"},
                "anatomic_region": {"code": "39607008", "scheme": "SCT", "meaning": "Lung"},
                "color_rgb": [255, 140, 0]}}

The service writes them into every DICOM SEG segment (``service.outputs.dicom_seg``). The fp32 file and
its variants from the same checkpoint are rewritten (embedded card and sidecar; the graph is untouched).
The default model's codes: ``models/default.class-codes.json``.

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
    parser.add_argument("--codes", type=Path, required=True, help="class codes JSON file (module docstring)")
    parser.add_argument("--dry-run", action="store_true", help="print the classes, write nothing")


def run(args: argparse.Namespace) -> int:
    from model_export.card_update import report_update, update_cards
    from msdn_core.card import with_class_meanings
    from msdn_core.onnx_model import ModelFileError, read_card

    try:
        codes = json.loads(args.codes.read_text(encoding="utf-8"))
        card, _ = read_card(args.model)
        classes = with_class_meanings(card.classes, codes)
        sys.stdout.write(json.dumps([c.to_dict() for c in classes]) + "\n")
        if args.dry_run:
            return 0
        done = update_cards(args.model, lambda c: dataclasses.replace(c, classes=with_class_meanings(c.classes, codes)))
    except (OSError, ValueError, ModelFileError) as exc:
        sys.stderr.write(f"msdn classes: error: {exc}\n")
        return 2
    report_update(done, sys.stdout)
    return 0
