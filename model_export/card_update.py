"""Rewrite the model card of an exported model and of its variants from the same checkpoint.

``update_cards(path, change)`` applies ``change(card) -> card`` to the embedded card and sidecar of the
fp32 file ``path`` and of each variant beside it (``<model>.fp16.onnx``, ``<model>.int8.onnx``) that
comes from the same checkpoint; a variant of another checkpoint is left as it was (and listed as
skipped). The graph is untouched (its ``msdn.graph_sha256`` stays valid); the file's bytes change, so
the sidecar's ``onnx_sha256`` is rewritten with them (``msdn_core.onnx_model.save_model``). Used by
``msdn calibrate`` (the proposal operating point) and ``msdn grid`` (the model grid).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable, Optional

from msdn_core.card import ModelCard
from msdn_core.onnx_model import PRECISIONS, ModelFileError, card_from_model, load_onnx, save_model, variant_path

logger = logging.getLogger(__name__)


def update_cards(
    model_path: str | Path, change: Callable[[ModelCard], ModelCard], *, variant: Optional[str] = None
) -> dict[str, list[Path]]:
    """Apply ``change`` to the cards of ``model_path`` and its same-checkpoint variants (module docstring).

    With ``variant`` (``int8``, ``fp16``): only that variant's file, which must exist and be of the fp32
    file's checkpoint.

    Returns:
        ``{"written": [files], "skipped": [variant files of another checkpoint]}``.

    Raises:
        ModelFileError: unreadable model, no card, a non-fp32 file, or a missing / foreign ``variant``.
    """
    path = Path(model_path)
    model = load_onnx(path)
    card = card_from_model(model, source=str(path))
    if card.precision != "fp32":
        raise ModelFileError(f"{path} is {card.precision}: update the fp32 export; its variants follow it")
    if variant is not None and (variant == "fp32" or variant not in PRECISIONS):
        raise ModelFileError(f"variant must be one of {[p for p in PRECISIONS if p != 'fp32']}, got {variant!r}")
    if variant is None:
        save_model(model, path, change(card))
    written, skipped = ([path] if variant is None else []), []
    for precision in PRECISIONS if variant is None else (variant,):
        sibling = variant_path(path, precision)
        if precision == "fp32" or not sibling.is_file():
            if variant is not None:
                raise ModelFileError(f"no {variant} variant {sibling} next to {path}")
            continue
        vmodel = load_onnx(sibling)
        vcard = card_from_model(vmodel, source=str(sibling))
        if card.checkpoint_sha256 is None or vcard.checkpoint_sha256 != card.checkpoint_sha256:
            logger.warning(
                "%s is not from the checkpoint of %s (checkpoint %s, not %s): its card is left as it was",
                sibling.name,
                path.name,
                (vcard.checkpoint_sha256 or "?")[:12],
                (card.checkpoint_sha256 or "?")[:12],
            )
            if variant is not None:
                raise ModelFileError(f"{sibling} is not from the checkpoint of {path}: not written")
            skipped.append(sibling)
            continue
        save_model(vmodel, sibling, change(vcard))
        written.append(sibling)
    return {"written": written, "skipped": skipped}


def report_update(done: dict[str, list[Path]], out) -> None:
    """Write ``update_cards``' result to ``out``, a line per file (``msdn grid``, ``msdn classes``)."""
    for path in done["written"]:
        out.write(f"written {path}\n")
    for path in done["skipped"]:
        out.write(f"skipped {path} (another checkpoint)\n")


__all__ = ["report_update", "update_cards"]
