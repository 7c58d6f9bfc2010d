"""``msdn export CHECKPOINT -o model.onnx``: ONNX export with parity check, model card and variants.

Examples::

    msdn export runs/msdn/best.pt -o models/msdn.onnx
    msdn export runs/msdn/best.pt -o models/msdn.onnx --no-detection   # segmentation output only
    msdn export runs/msdn/best.pt -o models/msdn.onnx --fp16 \\
        --int8 --calibration-npz calib.npz --validation-npz val.npz

Models with a Detection Unit are exported with ``det_scores`` / ``det_boxes`` by default
(``--no-detection`` drops them). Writes ``model.onnx`` + ``model.card.json``, and with ``--fp16`` / ``--int8`` also
``model.fp16.onnx`` / ``model.int8.onnx`` with their cards, and ``model.export.json`` (parity and
variant Dice). Exit status: 0 done, 1 export or variant failed (parity, refused int8), 2 bad input.

Calibration / validation ``.npz``: arrays ``images`` (N, C, H, W) float32 already normalised by the
model card's contract (clip, then ``(x - mean) / std``; H, W multiples of 16) and, for validation,
``labels`` (N, H, W) integers 0..C. Without ``--validation-npz`` the int8 Dice check runs on the
calibration patches (their labels, else agreement with fp32) and says so.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

logger = logging.getLogger(__name__)


def _size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 128x128, got {text!r}") from None
    return h, w


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", type=Path, help="checkpoint written by msdn train (save_checkpoint)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="destination .onnx file")
    det = parser.add_mutually_exclusive_group()
    det.add_argument(
        "--with-detection",
        dest="with_detection",
        action="store_true",
        default=None,
        help="also output det_scores / det_boxes (default for models with a Detection Unit)",
    )
    det.add_argument("--no-detection", dest="with_detection", action="store_false", help="segmentation output only")
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset, 17-21 (default 18)")
    parser.add_argument(
        "--export-size", type=_size, default=None, metavar="HxW", help="tracing size (default: patch size)"
    )
    parser.add_argument("--check-size", type=_size, default=None, metavar="HxW", help="second parity-check size")
    parser.add_argument("--fp16", action="store_true", help="also write the fp16 variant (CUDA EP)")
    parser.add_argument("--int8", action="store_true", help="also write the int8 static-QDQ variant (CPU)")
    parser.add_argument("--calibration-npz", type=Path, default=None, help="int8 calibration patches (.npz)")
    parser.add_argument(
        "--manifest", type=Path, default=None, help="training manifest to draw calibration patches from"
    )
    parser.add_argument("--max-calibration", type=int, default=64, help="calibration patches used (default 64)")
    parser.add_argument("--calibration-method", choices=("minmax", "entropy", "percentile"), default="minmax")
    parser.add_argument("--validation-npz", type=Path, default=None, help="patches + labels for variant Dice")
    parser.add_argument(
        "--max-int8-loss", type=float, default=0.5, help="largest int8 Dice loss in points accepted (default 0.5)"
    )
    parser.add_argument("--force", action="store_true", help="keep an int8 model that loses more Dice than allowed")


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"msdn export: error: {message}\n")
    return code


def run(args: argparse.Namespace) -> int:
    from model_export.checkpoint import CheckpointError
    from model_export.export.calibration import CalibrationDataError, load_manifest_patches, load_npz
    from model_export.export.onnx_export import DEFAULT_OPSET, ExportError, export_checkpoint
    from model_export.export.variants import VariantError, build_variants

    if args.output.suffix != ".onnx":
        return _fail(f"--output must end in .onnx, got {args.output}", 2)
    if (args.calibration_npz or args.manifest) and not args.int8:
        return _fail("--calibration-npz / --manifest are for --int8", 2)
    if args.max_calibration < 1:
        return _fail(f"--max-calibration must be >= 1, got {args.max_calibration}", 2)
    # Read the data first: a bad calibration file should fail before a slow export.
    calibration = validation = None
    try:
        if args.int8:
            if args.calibration_npz:
                calibration = load_npz(args.calibration_npz, description=f"{args.calibration_npz.name}")
            elif args.manifest:
                from model_export.checkpoint import read_checkpoint
                from msdn_core.card import ModelCard

                spec = ModelCard.from_dict(read_checkpoint(args.checkpoint)["card"]).input
                common = {
                    "normalization": spec.normalization.to_dict(),
                    "patch_size": int(spec.patch_size[0]),
                    "grid": spec.model_grid(),
                }
                calibration = load_manifest_patches(args.manifest, limit=args.max_calibration, **common)
                if not args.validation_npz:
                    validation = load_manifest_patches(args.manifest, split="val", limit=args.max_calibration, **common)
            else:
                return _fail("--int8 needs calibration patches: --calibration-npz FILE (or --manifest)", 2)
            calibration = calibration.head(args.max_calibration)
        if args.validation_npz:
            validation = load_npz(args.validation_npz)
    except CheckpointError as exc:
        return _fail(str(exc), 2)
    except CalibrationDataError as exc:
        return _fail(str(exc), 2)

    try:
        result, _ = export_checkpoint(
            args.checkpoint,
            args.output,
            with_detection=args.with_detection,
            opset=args.opset or DEFAULT_OPSET,
            export_size=args.export_size,
            check_size=args.check_size,
        )
    except (CheckpointError, ValueError) as exc:
        return _fail(str(exc), 2)
    except ExportError as exc:
        return _fail(str(exc), 1)
    summary: dict = {"model": str(result.path), "card": result.card.to_dict(), "parity": result.parity.to_dict()}
    lines = [
        f"wrote {result.path} and {result.card_path}",
        "parity (ONNX Runtime CPU vs PyTorch):",
        result.parity.summary(),
    ]

    status = 0
    if args.fp16 or args.int8:
        for data in (calibration, validation):
            if data is not None and data.channels != result.card.input.channels:
                return _fail(
                    f"{data.description}: {data.channels} image channels, the model takes {result.card.input.channels}",
                    2,
                )
        try:
            outcome = build_variants(
                result.path,
                fp16=args.fp16,
                int8_calibration=calibration,
                validation=validation,
                force=args.force,
                max_int8_loss=args.max_int8_loss,
                method=args.calibration_method,
            )
            summary["variants"] = {k: str(v) for k, v in outcome.paths.items()}
            lines += [f"wrote {p}" for p in outcome.paths.values()]
            report = outcome.report
        except VariantError as exc:
            report = exc.report
            summary["error"] = str(exc)
            lines.append(f"error: {exc}")
            status = 1
        if report is not None:
            summary["validation"] = report.to_dict()
            lines += ["", report.table()]
    report_path = args.output.with_suffix(".export.json")
    report_path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    lines.append(f"report: {report_path}")
    sys.stdout.write("\n".join(lines) + "\n")
    if status:
        sys.stderr.write(f"msdn export: error: {summary['error']}\n")
    return status
