"""Write the int8 variant of an exported fp32 model next to it, with its measured Dice loss in its card.

    PYTHONPATH=. python scripts/add_int8_variant.py models/default.onnx --manifest data/manifest.json

For a model whose checkpoint is gone (``msdn export --int8`` needs the checkpoint): calibration on
``--max-calibration`` training patches of the manifest, Dice against fp32 on its validation patches,
refused over ``--max-int8-loss`` points (as ``msdn export --int8``). Writes ``<model>.int8.onnx`` and
``<model>.int8.card.json`` (``variant_dice_loss``); the service serves it on the CPU with
``MSDN_PRECISION=auto`` when the loss is within ``MSDN_INT8_MAX_DICE_LOSS``. Prints the Dice table.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model_export.export.calibration import load_manifest_patches  # noqa: E402
from model_export.export.variants import MAX_INT8_DICE_LOSS, VariantError, build_variants  # noqa: E402
from msdn_core.onnx_model import card_from_model, load_onnx  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", type=Path, help="the fp32 export (.onnx with its card)")
    parser.add_argument("--manifest", type=Path, required=True, help="data set manifest (train: calibration, val)")
    parser.add_argument("--max-calibration", type=int, default=64, help="patches for calibration and validation")
    parser.add_argument("--max-int8-loss", type=float, default=MAX_INT8_DICE_LOSS, help="refuse above (Dice points)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    card = card_from_model(load_onnx(args.model, load_weights=False), source=str(args.model))
    spec = card.to_dict()["input"]
    common = {"normalization": spec, "patch_size": int(spec["patch_size"][0]), "limit": args.max_calibration}
    calibration = load_manifest_patches(args.manifest, split="train", **common)
    validation = load_manifest_patches(args.manifest, split="val", **common)
    try:
        outcome = build_variants(
            args.model, int8_calibration=calibration, validation=validation, max_int8_loss=args.max_int8_loss
        )
    except VariantError as exc:
        print(f"int8 refused: {exc}", file=sys.stderr)
        if exc.report is not None:
            print(exc.report.table(), file=sys.stderr)
        return 1
    assert outcome.report is not None
    print(outcome.report.table())
    print(json.dumps({"int8": str(outcome.paths["int8"]), "dice_loss": outcome.report.loss("int8")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
