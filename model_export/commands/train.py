"""``msdn train``: train a model of the family on a manifest (paper defaults).

Single process::

    msdn train --manifest data/lung/manifest.json --model msdn --out runs/lung-msdn

Several processes or machines (DDP; gloo on CPU, NCCL on GPUs)::

    torchrun --nproc-per-node 2 -m model_export.cli train --manifest ... --out ...
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from model_export.nets.config import MODEL_NAMES, PRESETS

logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from model_export.training.config import TrainConfig

    d = TrainConfig()
    parser.add_argument("--manifest", required=True, help="data set manifest (train and val splits are used)")
    parser.add_argument("--out", required=True, help="output folder (best.pt, last.pt, metrics.csv/json)")
    parser.add_argument("--model", choices=MODEL_NAMES, default=d.model)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=d.preset)
    parser.add_argument(
        "--model-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="NetConfig override, value as JSON (e.g. base_channels=8); repeatable",
    )
    parser.add_argument("--patch-size", type=int, default=d.patch_size)
    parser.add_argument("--batch-size", type=int, default=d.batch_size)
    parser.add_argument("--lr", type=float, default=d.lr)
    parser.add_argument("--lr-factor", type=float, default=d.lr_factor)
    parser.add_argument("--lr-patience", type=int, default=d.lr_patience)
    parser.add_argument("--early-stop", type=int, default=d.early_stop, help="epochs without improvement")
    parser.add_argument("--epochs", type=int, default=d.max_epochs, help="maximum epochs")
    parser.add_argument("--steps-per-epoch", type=int, default=None, help="default: one pass over the patches")
    parser.add_argument("--jitter", type=float, default=d.jitter)
    parser.add_argument("--noise-std", type=float, default=d.noise_std)
    parser.add_argument("--no-flip", action="store_true")
    parser.add_argument(
        "--away-fraction",
        type=float,
        default=d.away_fraction,
        help="fraction of patches drawn away from the target (for whole-slice inference)",
    )
    g = parser.add_argument_group("whole-series training (issue 9) and ablations (issue 10)")
    g.add_argument(
        "--batch-composition",
        default=d.batch_composition,
        metavar="proportional|S:W",
        help="proportional (paper) or S strong + W weak rows per batch, e.g. 2:2 (S + W = batch size)",
    )
    g.add_argument(
        "--hard-negative-fraction",
        type=float,
        default=d.hard_negative_fraction,
        help="fraction of patches centred on target-like structures away from every target",
    )
    g.add_argument(
        "--away-cases",
        choices=("same", "all"),
        default=d.away_cases,
        help="away / hard-negative patches from the item's own case or any case of its kind (incl. target-free)",
    )
    g.add_argument(
        "--box-mode",
        choices=("component", "object"),
        default=d.box_mode,
        help="strong-row boxes: one per 2D connected component or one per 3D object projected to the slice",
    )
    g.add_argument("--dice-foreground-only", action="store_true", help="Dice over foreground classes, batch-pooled")
    g.add_argument("--det-loss-weight", type=float, default=d.det_loss_weight, help="weight of the detection loss")
    g.add_argument(
        "--seg-ce-weight",
        type=float,
        default=d.seg_ce_weight,
        help="weight of a pixel-wise cross-entropy added to the segmentation Dice (0: Dice only, as the paper)",
    )
    g.add_argument(
        "--det-on-strong",
        choices=("on", "off"),
        default="on" if d.det_on_strong else "off",
        help="detection loss on strong rows too (off = paper: strong rows get only the segmentation loss)",
    )
    g.add_argument(
        "--box-constraints",
        default=None,
        metavar="JSON",
        help=(
            "segmentation-only models: train on the weak rows too with the box emptiness/tightness/size "
            "constraints (Kervadec et al. 2020); BoxConstraintLoss options as JSON, '{}' for the defaults, "
            "e.g. '{\"size_bounds\": [0.5, 0.9]}'"
        ),
    )
    g.add_argument("--detach-gates", action="store_true", help="sSE links read detached detection features")
    g.add_argument("--stride1", action="store_true", help="add the stride-1 decoder level to the detection levels")
    g.add_argument("--fit-anchors", action="store_true", help="fit the anchor shapes to the training boxes")
    g.add_argument("--anchors-per-level", type=int, default=d.anchors_per_level)
    g.add_argument(
        "--selection",
        choices=("crop", "series"),
        default=d.selection,
        help="checkpoint selection on target-centred crop Dice (paper) or the whole-series score",
    )
    g.add_argument(
        "--time-limit", type=float, default=None, metavar="MINUTES", help="stop after the epoch passing this time"
    )
    g.add_argument("--val-max-fg-slices", type=int, default=d.val_max_fg_slices)
    g.add_argument("--val-negative-slices", type=int, default=d.val_negative_slices)
    g.add_argument("--val-fp-penalty", type=float, default=d.val_fp_penalty)
    parser.add_argument("--clip", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"), help="intensity clip")
    parser.add_argument(
        "--spacing",
        default="auto",
        metavar="auto|none|SY,SX",
        help="model grid voxel size in mm (msdn_core.grid): auto = the median in-plane spacing of the training "
        "images (default), a value, or none (every image on its own grid)",
    )
    parser.add_argument(
        "--orientation",
        default="LPS",
        metavar="LPS|none",
        help="model grid axes as LPS letters of x, y, z (default LPS, the DICOM axial view), or none",
    )
    parser.add_argument("--seed", type=int, default=d.seed)
    parser.add_argument("--device", default=d.device, help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--no-amp", action="store_true", help="disable mixed precision on cuda")
    parser.add_argument("--workers", type=int, default=d.num_workers)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    parser.add_argument("--no-progress", action="store_true")


def parse_box_constraints(text: str | None) -> dict | None:
    """``--box-constraints`` JSON -> options dict (None when not given)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"--box-constraints must be a JSON object, got {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"--box-constraints must be a JSON object, got {text!r}")
    return value


def parse_options(items: list[str]) -> dict:
    """``["base_channels=8", "dropout=0.2"]`` -> dict (values parsed as JSON when possible)."""
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--model-option must be KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def run(args: argparse.Namespace) -> int:
    from model_export.data.grid_plan import parse_orientation_option, parse_spacing_option
    from model_export.data.manifest import ManifestError, load_manifest
    from model_export.training import TrainConfig, train

    try:
        options = parse_options(args.model_option)
        if args.detach_gates:
            options["detach_gates"] = True
        if args.stride1:
            from model_export.nets import make_config

            strides = options.get("detection_strides") or make_config(args.model, preset=args.preset).detection_strides
            options["detection_strides"] = sorted(set(strides) | {1}, reverse=True)
        config = TrainConfig(
            model=args.model,
            preset=args.preset,
            model_options=options,
            patch_size=args.patch_size,
            batch_size=args.batch_size,
            lr=args.lr,
            lr_factor=args.lr_factor,
            lr_patience=args.lr_patience,
            early_stop=args.early_stop,
            max_epochs=args.epochs,
            steps_per_epoch=args.steps_per_epoch,
            jitter=args.jitter,
            noise_std=args.noise_std,
            flip=not args.no_flip,
            away_fraction=args.away_fraction,
            clip=tuple(args.clip) if args.clip else None,
            spacing=parse_spacing_option(args.spacing),
            orientation=parse_orientation_option(args.orientation),
            seed=args.seed,
            device=args.device,
            amp=not args.no_amp,
            num_workers=args.workers,
            threads=args.threads,
            progress=not args.no_progress,
            batch_composition=args.batch_composition,
            hard_negative_fraction=args.hard_negative_fraction,
            away_cases=args.away_cases,
            box_mode=args.box_mode,
            dice_foreground_only=args.dice_foreground_only,
            det_loss_weight=args.det_loss_weight,
            seg_ce_weight=args.seg_ce_weight,
            det_on_strong=args.det_on_strong == "on",
            box_constraints=parse_box_constraints(args.box_constraints),
            fit_anchors=args.fit_anchors,
            anchors_per_level=args.anchors_per_level,
            selection=args.selection,
            val_max_fg_slices=args.val_max_fg_slices,
            val_negative_slices=args.val_negative_slices,
            val_fp_penalty=args.val_fp_penalty,
            time_limit_minutes=args.time_limit,
        )
        manifest = load_manifest(args.manifest)
        result = train(config, manifest, args.out, resume=args.resume)
    except (ValueError, ManifestError) as exc:
        sys.stderr.write(f"msdn train: error: {exc}\n")
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    metric = "whole-series score" if config.selection == "series" else "validation Dice"
    sys.stdout.write(
        f"best {metric} {result.best_val_dice:.4f} at epoch {result.best_epoch} "
        f"({result.epochs} epochs{', early stop' if result.stopped_early else ''}); checkpoint {result.best_path}\n"
    )
    return 0
