"""Export the segmentation path of a model to one self-contained, self-describing ONNX file.

Exporter: ``torch.export`` (non-strict) + ``torch.onnx.export(ExportedProgram, dynamo=True)``. Compared
with the legacy TorchScript exporter (``dynamo=False``, deprecated since PyTorch 2.9) on these models it
gives a graph with about half the nodes (no Identity/Constant/Shape-Gather chains from dropout and the
in-graph anchor generation) at the same ONNX Runtime speed, and its dynamic dimensions are checked by
``torch.export`` (a dimension the code would silently specialise is an error, not a fixed-size graph).
The price is a slower export (seconds instead of a fraction of one). We run ``torch.export.export``
ourselves, so its errors surface instead of the ONNX exporter's silent retry in strict mode.

The exported graph has input ``image`` (B, C_in, H, W) float32 with dynamic B, H, W (H, W multiples
of 16) and output ``probabilities`` (B, C+1, H, W); with detection also ``det_scores`` (B, N, C) and
``det_boxes`` (B, N, 4) (see ``model_export.export.graphs``). The model card is embedded in the
metadata and written beside the file. Every export is parity-checked against PyTorch on ONNX Runtime
(CPU) at two sizes and refused when it disagrees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch

from model_export.checkpoint import file_sha256, load_checkpoint
from model_export.export.graphs import DET_BOXES_NAME, DET_SCORES_NAME, export_graph
from model_export.nets import SIZE_MULTIPLE, SegmentationModel
from msdn_core.card import INPUT_NAME, OUTPUT_NAME, ModelCard
from msdn_core.onnx_model import embed_card, sidecar_path, write_sidecar

logger = logging.getLogger(__name__)

#: ONNX opset of exported graphs (ONNX Runtime >= 1.14 runs it; QDQ per-channel needs >= 13).
DEFAULT_OPSET = 18
#: Opsets the exporter is allowed to target.
SUPPORTED_OPSETS = range(17, 22)
#: Parity tolerance on probabilities and detection scores (max absolute difference).
PROB_ATOL = 1e-4
#: Parity tolerance on decoded boxes, in pixels: ``|onnx - torch| <= BOX_ATOL + BOX_RTOL * |torch|``.
BOX_ATOL = 1e-3
BOX_RTOL = 1e-5
#: Largest batch the exported graph declares (torch.export needs a bound; ONNX keeps it symbolic).
MAX_BATCH = 4096
#: Largest H or W the exported graph declares, in pixels.
MAX_SIDE = 8192


class ExportError(RuntimeError):
    """The model could not be exported (the message says why)."""


class ParityError(ExportError):
    """ONNX Runtime output disagrees with PyTorch beyond the tolerances; ``report`` holds the numbers."""

    def __init__(self, message: str, report: ParityReport):
        super().__init__(message)
        self.report = report


@dataclass
class ParityCase:
    """Parity numbers for one input shape."""

    shape: tuple[int, int, int, int]
    prob_max_abs_diff: float
    argmax_agreement: float
    argmax_disagreements: int
    min_margin_at_disagreement: float | None = None
    score_max_abs_diff: float | None = None
    box_max_abs_diff: float | None = None
    box_within_tolerance: bool | None = None

    def failures(self, atol: float) -> list[str]:
        """What fails the check at tolerance ``atol`` (empty when it passes)."""
        out = []
        if not self.prob_max_abs_diff <= atol:
            out.append(f"probabilities differ by up to {self.prob_max_abs_diff:.3g} (> {atol:g})")
        if self.argmax_disagreements:
            out.append(
                f"argmax differs on {self.argmax_disagreements} pixels (agreement {self.argmax_agreement:.6%}, "
                f"smallest PyTorch top-2 margin there {self.min_margin_at_disagreement:.3g})"
            )
        if self.score_max_abs_diff is not None and not self.score_max_abs_diff <= atol:
            out.append(f"detection scores differ by up to {self.score_max_abs_diff:.3g} (> {atol:g})")
        if self.box_within_tolerance is False:
            out.append(
                f"decoded boxes differ by up to {self.box_max_abs_diff:.3g} px (> {BOX_ATOL:g} + {BOX_RTOL:g} x |box|)"
            )
        return out


@dataclass
class ParityReport:
    """Outcome of ``check_parity``: one ``ParityCase`` per checked shape."""

    cases: list[ParityCase]
    atol: float = PROB_ATOL

    @property
    def passed(self) -> bool:
        """True when every case is within tolerance with 100% argmax agreement."""
        return all(not c.failures(self.atol) for c in self.cases)

    def to_dict(self) -> dict:
        """JSON-friendly form."""
        return {"atol": self.atol, "passed": self.passed, "cases": [dataclasses.asdict(c) for c in self.cases]}

    def summary(self) -> str:
        """One line per case."""
        lines = []
        for c in self.cases:
            line = (
                f"{'x'.join(map(str, c.shape))}: max|dp| {c.prob_max_abs_diff:.2e}, argmax agreement "
                f"{c.argmax_agreement:.4%}"
            )
            if c.score_max_abs_diff is not None:
                line += f", max|d score| {c.score_max_abs_diff:.2e}, max|d box| {c.box_max_abs_diff:.2e} px"
            lines.append(line)
        return "\n".join(lines)


@dataclass
class ExportResult:
    """What ``export_model`` wrote and measured."""

    path: Path
    card_path: Path
    card: ModelCard
    parity: ParityReport
    extra: dict = field(default_factory=dict)


def _check_size(name: str, size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < SIZE_MULTIPLE for v in size):
        raise ValueError(f"{name} must be (H, W) integers >= {SIZE_MULTIPLE}, got {size!r}")
    if any(v % SIZE_MULTIPLE for v in size):
        raise ValueError(f"{name} must be multiples of {SIZE_MULTIPLE}, got {tuple(size)}")
    return int(size[0]), int(size[1])


def default_sizes(patch_size: Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Export size (the training patch, rounded up to the size multiple) and a different check size.

    For a 128x128 patch: export at 128x128, check also at 96x160 (other H and W, aspect ratio != 1).
    """
    m = SIZE_MULTIPLE
    h, w = (max(m, -(-int(v) // m) * m) for v in patch_size)
    check = (h - 2 * m if h > 2 * m else h + 2 * m, w + 2 * m)
    return (h, w), check


def build_export_card(
    card: ModelCard,
    *,
    opset: int,
    with_detection: bool = False,
    checkpoint_sha256: str | None = None,
    precision: str = "fp32",
    export_date: str | None = None,
) -> ModelCard:
    """A copy of ``card`` completed with what the export adds (outputs, opset, date, precision, source hash)."""
    outputs: dict = {"segmentation": OUTPUT_NAME}
    if with_detection:
        outputs["detection"] = {"scores": DET_SCORES_NAME, "boxes": DET_BOXES_NAME}
    return dataclasses.replace(
        card,
        classes=[dataclasses.replace(c) for c in card.classes],
        input=dataclasses.replace(card.input),
        architecture=dict(card.architecture),
        training=dict(card.training),
        outputs=outputs,
        input_name=INPUT_NAME,
        opset=int(opset),
        precision=precision,
        checkpoint_sha256=checkpoint_sha256 if checkpoint_sha256 is not None else card.checkpoint_sha256,
        export_date=export_date or _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporter's informational chatter (e.g. torchvision ops it skips)."""
    names = ("torch.onnx", "torch.export", "onnxscript", "onnx_ir")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _rename_dims(model: onnx.ModelProto, renames: dict[str, str]) -> None:
    """Rename symbolic dimensions everywhere in the graph's type annotations."""
    values = list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info)
    for value in values:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in renames:
                dim.dim_param = renames[dim.dim_param]


def _to_onnx(graph: torch.nn.Module, example: torch.Tensor, *, output_names: list[str], opset: int) -> onnx.ModelProto:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=MAX_BATCH)
    hb = Dim("height_blocks", min=1, max=MAX_SIDE // SIZE_MULTIPLE)
    wb = Dim("width_blocks", min=1, max=MAX_SIDE // SIZE_MULTIPLE)
    shapes = {"x": {0: batch, 2: SIZE_MULTIPLE * hb, 3: SIZE_MULTIPLE * wb}}
    with _quiet_exporter(), torch.no_grad():
        try:
            program = torch.export.export(graph, (example,), dynamic_shapes=shapes, strict=False)
        except Exception as exc:
            raise ExportError(f"torch.export could not trace the model with dynamic batch/height/width: {exc}") from exc
        onnx_program = torch.onnx.export(
            program,
            (example,),
            dynamo=True,
            input_names=[INPUT_NAME],
            output_names=output_names,
            opset_version=opset,
            external_data=False,
            optimize=True,
            verbose=False,
        )
    model = onnx_program.model_proto
    # Readable symbolic dimension names for the graph's inputs and outputs.
    renames = {}
    for value in list(model.graph.input) + list(model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            renames[dims[0].dim_param] = "batch"
        if value.name in (INPUT_NAME, OUTPUT_NAME) and len(dims) == 4:
            renames[dims[2].dim_param] = "height"
            renames[dims[3].dim_param] = "width"
        elif value.name in (DET_SCORES_NAME, DET_BOXES_NAME) and len(dims) == 3 and dims[1].dim_param:
            renames[dims[1].dim_param] = "anchors"
    renames.pop("", None)
    _rename_dims(model, renames)
    model.producer_name = "msdn"
    from model_export import __version__

    model.producer_version = __version__
    return model


def _run_torch(graph: torch.nn.Module, x: np.ndarray) -> list[np.ndarray]:
    with torch.no_grad():
        out = graph(torch.from_numpy(x))
    outs = out if isinstance(out, tuple) else (out,)
    return [o.detach().cpu().numpy() for o in outs]


def _torch_reference(model: SegmentationModel, x: np.ndarray, with_detection: bool) -> list[np.ndarray]:
    """Reference outputs by the model's own API (``det_unit.detect``, MONAI decoding): an independent path."""
    with torch.no_grad():
        t = torch.from_numpy(x)
        if not with_detection:
            return [model.segment(t).numpy()]
        out = model(t)
        scores, boxes = model.det_unit.detect(out["cls_logits"], out["box_deltas"], out["det_sizes"])
        return [out["segmentation"].numpy(), scores.numpy(), boxes.numpy()]


def compare_outputs(
    shape: Sequence[int], reference: Sequence[np.ndarray], candidate: Sequence[np.ndarray]
) -> ParityCase:
    """Parity numbers of candidate outputs (probs[, scores, boxes]) against the reference."""
    ref_p, got_p = reference[0], candidate[0]
    if ref_p.shape != got_p.shape:
        raise ExportError(f"ONNX probabilities have shape {got_p.shape}, PyTorch {ref_p.shape}")
    diff = float(np.max(np.abs(got_p.astype(np.float64) - ref_p)))
    ref_label, got_label = ref_p.argmax(1), got_p.argmax(1)
    wrong = ref_label != got_label
    margin = None
    if wrong.any():
        top2 = np.sort(ref_p, axis=1)[:, -2:]
        margin = float((top2[:, 1] - top2[:, 0])[wrong].min())
    case = ParityCase(
        shape=tuple(int(s) for s in shape),
        prob_max_abs_diff=diff if np.isfinite(diff) else float("inf"),
        argmax_agreement=float(1.0 - wrong.mean()),
        argmax_disagreements=int(wrong.sum()),
        min_margin_at_disagreement=margin,
    )
    if len(reference) == 3:
        for name, r, g in zip(("det_scores", "det_boxes"), reference[1:], candidate[1:], strict=True):
            if r.shape != g.shape:
                raise ExportError(f"ONNX {name} has shape {g.shape}, PyTorch {r.shape}")
        case.score_max_abs_diff = float(np.max(np.abs(candidate[1].astype(np.float64) - reference[1])))
        box_err = np.abs(candidate[2].astype(np.float64) - reference[2])
        case.box_max_abs_diff = float(box_err.max())
        case.box_within_tolerance = bool(np.all(box_err <= BOX_ATOL + BOX_RTOL * np.abs(reference[2])))
    return case


def check_parity(
    model: SegmentationModel,
    onnx_path: str | os.PathLike,
    *,
    sizes: Sequence[tuple[int, int]],
    batches: Sequence[int] | None = None,
    with_detection: bool = False,
    atol: float = PROB_ATOL,
    seed: int = 0,
    raise_on_failure: bool = True,
) -> ParityReport:
    """Run the ONNX file on ONNX Runtime (CPU) and the model in PyTorch on the same random inputs.

    Args:
        model: the exported model (eval mode).
        onnx_path: the exported file.
        sizes: (H, W) of each check.
        batches: batch size of each check (default 2 for the first size, 1 for the others).
        with_detection: the file also outputs ``det_scores`` and ``det_boxes``.
        atol: tolerance on probabilities and scores.
        seed: seed of the standard-normal inputs (inputs are already normalised images).
        raise_on_failure: raise ``ParityError`` when a case fails.

    Returns:
        The ``ParityReport``.
    """
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    batches = list(batches) if batches is not None else [2] + [1] * (len(sizes) - 1)
    if len(batches) != len(sizes):
        raise ValueError(f"batches must have one entry per size, got {batches!r} for {len(sizes)} sizes")
    rng = np.random.default_rng(seed)
    cases = []
    for (h, w), b in zip(sizes, batches, strict=True):
        x = rng.standard_normal((b, model.config.in_channels, h, w), dtype=np.float32)
        reference = _torch_reference(model, x, with_detection)
        candidate = session.run(None, {INPUT_NAME: x})
        cases.append(compare_outputs(x.shape, reference, candidate))
    report = ParityReport(cases, atol=atol)
    if raise_on_failure and not report.passed:
        problems = "; ".join(
            f"{'x'.join(map(str, c.shape))}: {', '.join(c.failures(atol))}" for c in cases if c.failures(atol)
        )
        raise ParityError(f"ONNX Runtime disagrees with PyTorch: {problems}", report)
    return report


def export_model(
    model: SegmentationModel,
    path: str | os.PathLike,
    *,
    card: ModelCard,
    with_detection: bool = False,
    opset: int = DEFAULT_OPSET,
    export_size: Sequence[int] | None = None,
    check_size: Sequence[int] | None = None,
    checkpoint_sha256: str | None = None,
    atol: float = PROB_ATOL,
) -> ExportResult:
    """Export ``model``'s segmentation path (and detections) to ``path``, checked and self-describing.

    Writes ``path`` (one file, no external data) and its sidecar card only when the ONNX checker and
    the parity check pass; on failure nothing is left behind.

    Args:
        model: a model of the family.
        path: destination ``.onnx``.
        card: the model's card (from its checkpoint); completed by ``build_export_card``.
        with_detection: also output ``det_scores`` / ``det_boxes`` (models with a Detection Unit).
        opset: ONNX opset (17-21).
        export_size: (H, W) of the tracing example (default: the card's patch size).
        check_size: a second (H, W) for the parity check (default: ``default_sizes``).
        checkpoint_sha256: SHA-256 of the source checkpoint file, recorded in the card.
        atol: parity tolerance on probabilities and scores.

    Raises:
        ValueError: bad argument (model without detection asked for detection, bad size or opset).
        ExportError: tracing or the ONNX checker failed.
        ParityError: ONNX Runtime disagrees with PyTorch.
    """
    if opset not in SUPPORTED_OPSETS:
        raise ValueError(f"opset must be in {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}, got {opset!r}")
    if with_detection and not model.has_detection:
        raise ValueError(f"model {model.config.name!r} has no detection unit: export it without detection")
    if card.num_classes != model.config.num_classes or card.input.channels != model.config.in_channels:
        raise ValueError(
            f"card ({card.num_classes} classes, {card.input.channels} channels) does not match the model "
            f"({model.config.num_classes} classes, {model.config.in_channels} channels)"
        )
    default_export, default_check = default_sizes(export_size or card.input.patch_size)
    ex_size = _check_size("export_size", tuple(export_size)) if export_size else default_export
    ck_size = _check_size("check_size", tuple(check_size)) if check_size else default_check
    path = Path(path)
    model = model.eval()
    graph = export_graph(model, with_detection=with_detection)
    output_names = [OUTPUT_NAME] + ([DET_SCORES_NAME, DET_BOXES_NAME] if with_detection else [])
    # Batch 2: torch.export specialises dimensions of size 0 and 1.
    example = torch.zeros(2, model.config.in_channels, *ex_size)
    logger.info("exporting %s (detection: %s) at 2x%dx%d, opset %d", model.config.name, with_detection, *ex_size, opset)
    proto = _to_onnx(graph, example, output_names=output_names, opset=opset)
    export_card = build_export_card(
        card, opset=opset, with_detection=with_detection, checkpoint_sha256=checkpoint_sha256
    )
    embed_card(proto, export_card)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise ExportError(f"exported graph fails the ONNX checker: {exc}") from exc
        report = check_parity(
            model, tmp, sizes=[ex_size, ck_size], with_detection=with_detection, atol=atol, raise_on_failure=True
        )
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    card_path = write_sidecar(path, export_card)
    logger.info("wrote %s (%.1f MB) and %s; parity:\n%s", path, path.stat().st_size / 1e6, card_path, report.summary())
    return ExportResult(path=path, card_path=card_path, card=export_card, parity=report)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    path: str | os.PathLike,
    *,
    with_detection: bool | None = None,
    opset: int = DEFAULT_OPSET,
    export_size: Sequence[int] | None = None,
    check_size: Sequence[int] | None = None,
) -> tuple[ExportResult, SegmentationModel]:
    """Load a checkpoint (``model_export.checkpoint``) and ``export_model`` it, recording its SHA-256.

    Args:
        with_detection: also export ``det_scores`` / ``det_boxes``; None (default) = whenever the
            model has a Detection Unit.

    Returns:
        ``(result, model)``: the model stays loaded for variant checks.
    """
    model, card, _ = load_checkpoint(checkpoint)
    if with_detection is None:
        with_detection = model.has_detection
    result = export_model(
        model,
        path,
        card=card,
        with_detection=with_detection,
        opset=opset,
        export_size=export_size,
        check_size=check_size,
        checkpoint_sha256=file_sha256(checkpoint),
    )
    return result, model


__all__ = [
    "DEFAULT_OPSET",
    "ExportError",
    "ExportResult",
    "ParityCase",
    "ParityError",
    "ParityReport",
    "build_export_card",
    "check_parity",
    "compare_outputs",
    "default_sizes",
    "export_checkpoint",
    "export_model",
    "sidecar_path",
]
