"""``msdn summary``: build a model and print its structure, parameters and output shapes."""

from __future__ import annotations

import argparse
import sys

from model_export.nets.config import MODEL_NAMES, PRESETS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", choices=MODEL_NAMES, default="msdn")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    parser.add_argument("--num-classes", type=int, default=1)
    parser.add_argument("--size", type=int, nargs=2, default=(128, 128), metavar=("H", "W"))
    parser.add_argument("--full", action="store_true", help="print the whole module tree")


def run(args: argparse.Namespace) -> int:
    import torch

    from model_export.nets import build_model

    model = build_model(args.model, preset=args.preset, num_classes=args.num_classes).eval()
    x = torch.zeros(1, model.config.in_channels, *args.size)
    with torch.no_grad():
        out = model(x)
    lines = [
        f"model {args.model} (preset {args.preset})",
        f"config {model.config.to_dict()}",
        f"parameters {sum(p.numel() for p in model.parameters()):,}",
        f"segmentation output {tuple(out['segmentation'].shape)}",
    ]
    if model.has_detection:
        anchors = sum(c.shape[1] for c in out["cls_logits"])
        lines.append(f"detection levels {out['det_sizes']} -> {anchors} anchors")
    if args.full:
        lines.append(str(model))
    sys.stdout.write("\n".join(lines) + "\n")
    return 0
