"""The ``msdn`` command line.

Each subcommand lives in its own module exposing ``add_arguments(parser)`` and ``run(args) -> int``;
modules are imported only when their command runs, so ``msdn serve`` never imports PyTorch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Optional, Sequence

#: command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "summary": ("model_export.commands.summary", "build a model of the family and print its structure and size"),
    "synth": ("model_export.commands.synth", "write the synthetic lung-nodule / cochlea CT benchmark data"),
    "train": ("model_export.commands.train", "train a model on a masks-or-boxes manifest"),
    "evaluate": ("model_export.commands.evaluate", "Dice / IoU / HD95 of a checkpoint on a split"),
    "experiment": ("model_export.commands.experiment", "the paper's Table 1 protocol"),
    "export": ("model_export.commands.export", "export the segmentation path to ONNX with its model card"),
    "calibrate": (
        "model_export.commands.calibrate",
        "choose a detecting model's proposal score threshold on validation series and store it in its card",
    ),
    "grid": (
        "model_export.commands.grid",
        "write the model grid (spacing, orientation) of its training images into an exported model's card",
    ),
    "classes": (
        "model_export.commands.classes",
        "write what each class means (SNOMED CT category / type, region, colour) into an exported model's card",
    ),
    "serve": ("service.cli", "start the inference service (uvicorn)"),
    "segment": ("service.batch.cli", "segment studies (DICOM folders, zips, NIfTI, manifests) into SEG/NIfTI/JSON"),
}


def _load(command: str):
    module, _ = COMMANDS[command]
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one subparser per available command."""
    parser = argparse.ArgumentParser(prog="msdn", description="Mixed-Supervised Dual-Network toolkit")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text, add_help=False)
        p.set_defaults(_command=name)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of the ``msdn`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # Parse the command name first, then let its module add its own options.
    pre, _ = parser.parse_known_args(argv)
    if not getattr(pre, "command", None):
        parser.print_help()
        return 2
    module = _load(pre.command)
    if module is None:
        parser.error(f"command {pre.command!r} is not available in this installation")
    sub_parser = argparse.ArgumentParser(prog=f"msdn {pre.command}", description=COMMANDS[pre.command][1])
    sub_parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    module.add_arguments(sub_parser)
    rest = argv[argv.index(pre.command) + 1 :]
    args = sub_parser.parse_args(rest)
    logging.basicConfig(
        level=logging.DEBUG if (args.verbose or pre.verbose) else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return int(module.run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
