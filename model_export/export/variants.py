"""Reduced-precision variants of an exported fp32 model: fp16 (CUDA EP) and int8 static QDQ (CPU).

Both keep float32 ``image`` input and float32 outputs, the same tensor names and the embedded model
card (``precision`` set to ``fp16`` / ``int8``), and are single self-contained files.

* fp16: ``onnxruntime.transformers.float16`` with ``keep_io_types=True`` and its default block list
  (Resize, Range, ... stay fp32). Meant for the CUDA execution provider; ONNX Runtime's CPU EP runs it
  too (slowly), which is how tests and ``evaluate_variants`` check it here. The converter inserts
  one identical Cast per consumer of a shared initializer and appends Casts out of order, so the
  result is de-duplicated and topologically sorted (``onnx_ir``) before it is checked and saved.
* int8: ``onnxruntime.quantization`` pre-processing (``skip_symbolic_shape=True``: the symbolic
  shape inference fails on the dynamo exporter's graphs), then ``quantize_static`` in QDQ format with
  per-channel int8 weights and int8 activations calibrated (MinMax by default) on training patches.
  Only ``QUANTIZED_OPS`` are quantised: the convolutions and the pure data-movement ops between them.
  Softmax, the sSE gates, the Detection Unit's two output convolutions, the box decoding and every
  MaxPool / Resize / Concat that feeds no int8 convolution (the anchor grids and boxes, whose ranges
  calibrated on patches would clamp whole-slice boxes) stay float (quantising them costs accuracy
  and no time).

``evaluate_variants`` measures each variant's Dice on validation patches next to fp32's;
``check_int8`` refuses an int8 model that loses more than ``MAX_INT8_DICE_LOSS`` points.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from model_export.export.calibration import CalibrationReader, PatchSet, dice_points
from msdn_core.card import ModelCard
from msdn_core.onnx_model import (
    card_from_model,
    embed_card,
    load_onnx,
    sidecar_path,
    variant_path,
    write_sidecar,
)

logger = logging.getLogger(__name__)

#: Op types quantised in the int8 variant.
QUANTIZED_OPS = ("Conv", "MaxPool", "Resize", "Concat")
#: Largest Dice loss (points) of int8 against fp32 accepted without ``force``.
MAX_INT8_DICE_LOSS = 0.5
#: Calibration methods accepted by ``make_int8``.
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")


class VariantError(RuntimeError):
    """A variant could not be built or was refused (the message says why; ``report`` when measured)."""

    def __init__(self, message: str, report: VariantReport | None = None):
        super().__init__(message)
        self.report = report


def _variant_card(card: ModelCard, precision: str) -> ModelCard:
    return dataclasses.replace(card, precision=precision)


def _save(model: onnx.ModelProto, dst: Path, card: ModelCard) -> Path:
    embed_card(model, card)
    tmp = dst.with_name(dst.name + ".tmp")
    try:
        onnx.save_model(model, str(tmp), save_as_external_data=False)
        try:
            onnx.checker.check_model(str(tmp), full_check=True)
        except onnx.checker.ValidationError as exc:
            raise VariantError(f"{card.precision} model fails the ONNX checker: {exc}") from exc
        os.replace(tmp, dst)
    finally:
        tmp.unlink(missing_ok=True)
    write_sidecar(dst, card)
    return dst


def _record_dice_loss(path: Path, loss: float) -> None:
    """Write the measured Dice loss into the variant's card (embedded and sidecar)."""
    model = load_onnx(path)
    card = card_from_model(model, source=str(path))
    _save(model, path, dataclasses.replace(card, variant_dice_loss=round(float(loss), 4)))


def _dedupe_and_sort(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop byte-identical duplicate nodes and sort the graph topologically."""
    import onnx_ir as ir
    from onnx_ir.passes.common import TopologicalSortPass

    seen: dict[str, bytes] = {}
    keep = []
    for node in model.graph.node:
        key = node.SerializeToString()
        if node.name and node.name in seen:
            if seen[node.name] != key:
                raise VariantError(f"fp16 conversion produced two different nodes named {node.name!r}")
            continue
        seen[node.name] = key
        keep.append(node)
    del model.graph.node[:]
    model.graph.node.extend(keep)
    # The converter leaves stale fp32 value_info behind; ONNX Runtime re-infers shapes anyway.
    del model.graph.value_info[:]
    ir_model = ir.from_proto(model)
    TopologicalSortPass()(ir_model)
    return ir.to_proto(ir_model)


def make_fp16(src: str | os.PathLike, dst: str | os.PathLike | None = None) -> Path:
    """Write the fp16 variant of the fp32 export ``src`` (default ``<src>.fp16.onnx``) with its card.

    Raises:
        ModelFileError: ``src`` is not a valid exported model.
        VariantError: the converted graph is invalid.
    """
    from onnxruntime.transformers.float16 import convert_float_to_float16

    src = Path(src)
    dst = Path(dst) if dst is not None else variant_path(src, "fp16")
    model = load_onnx(src)
    card = card_from_model(model, source=str(src))
    if card.precision != "fp32":
        raise VariantError(f"{src} is {card.precision}; variants are made from the fp32 export")
    converted = convert_float_to_float16(model, keep_io_types=True)
    converted = _dedupe_and_sort(converted)
    _save(converted, dst, _variant_card(card, "fp16"))
    logger.info("wrote fp16 variant %s (%.1f MB)", dst, dst.stat().st_size / 1e6)
    return dst


def _detection_output_convs(model: onnx.ModelProto) -> list[str]:
    """Names of the Detection Unit's output convolutions (kept float in int8 models).

    Their weights are tiny (std 0.01 init) next to the classifier's prior bias (-4.6), so int8 needs a
    bias scale that rounds the weights away; and they feed the box decoding directly.
    """
    return [
        n.name
        for n in model.graph.node
        if n.op_type == "Conv"
        and len(n.input) > 1
        and any(k in n.input[1] for k in ("det_unit.cls_out", "det_unit.box_out"))
    ]


def _float_tail_nodes(model: onnx.ModelProto, int8_convs_excluded: Sequence[str]) -> list[str]:
    """Names of the quantisable data-movement nodes (MaxPool, Resize, Concat) that feed no int8 conv.

    Downstream of the last quantised convolution the graph carries the Detection Unit's anchor grids
    and decoded boxes, in pixels. Their int8 ranges would be calibrated on training patches (96 px),
    so on a whole slice (512 px) the quantised Concat of the pyramid levels clamps every box to the
    patch size. Nothing is gained by quantising them (no int8 kernel consumes them), so they stay float.

    Args:
        model: the pre-processed fp32 graph (topologically sorted, as ONNX requires).
        int8_convs_excluded: convolutions kept float (they do not count as int8 consumers).
    """
    excluded = set(int8_convs_excluded)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    reaches: dict[int, bool] = {}  # id(node) -> an int8 conv is at or below it
    keep_float = []
    for node in reversed(model.graph.node):
        below = any(reaches.get(id(c), False) for out in node.output for c in consumers.get(out, ()))
        is_int8_conv = node.op_type == "Conv" and node.name not in excluded
        reaches[id(node)] = is_int8_conv or below
        if node.op_type in QUANTIZED_OPS and node.op_type != "Conv" and not below:
            keep_float.append(node.name)
    return keep_float[::-1]


def make_int8(
    src: str | os.PathLike,
    calibration: PatchSet,
    dst: str | os.PathLike | None = None,
    *,
    per_channel: bool = True,
    method: str = "minmax",
    batch_size: int = 8,
) -> Path:
    """Write the int8 static-QDQ variant of the fp32 export ``src`` (default ``<src>.int8.onnx``).

    Args:
        src: fp32 export.
        calibration: normalised training patches (labels unused).
        dst: destination.
        per_channel: per-output-channel weight scales.
        method: ``minmax``, ``entropy`` or ``percentile`` calibration.
        batch_size: patches per calibration run.

    Raises:
        ValueError: bad ``method`` or channel count.
        VariantError: quantisation failed.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }
    if method not in methods:
        raise ValueError(f"method must be one of {CALIBRATION_METHODS}, got {method!r}")
    src = Path(src)
    dst = Path(dst) if dst is not None else variant_path(src, "int8")
    model = load_onnx(src)
    card = card_from_model(model, source=str(src))
    if card.precision != "fp32":
        raise VariantError(f"{src} is {card.precision}; variants are made from the fp32 export")
    if calibration.channels != card.input.channels:
        raise ValueError(f"calibration images have {calibration.channels} channels, the model {card.input.channels}")
    with tempfile.TemporaryDirectory(prefix="msdn-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        out = Path(tmp) / "int8.onnx"
        root = logging.getLogger()
        root_level = root.level
        # The quantiser logs every bias-scale adjustment at INFO on the root logger.
        root.setLevel(max(root_level, logging.WARNING))
        try:
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            pre_model = onnx.load(str(pre), load_external_data=False)
            exclude = _detection_output_convs(pre_model)
            exclude += _float_tail_nodes(pre_model, exclude)
            quantize_static(
                str(pre),
                str(out),
                CalibrationReader(calibration, batch_size=batch_size, input_name=card.input_name),
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(QUANTIZED_OPS),
                nodes_to_exclude=exclude,
                calibrate_method=methods[method],
                use_external_data_format=False,
            )
        except Exception as exc:  # ORT's quantiser raises many types
            raise VariantError(f"int8 quantisation of {src} failed: {exc}") from exc
        finally:
            root.setLevel(root_level)
        quantized = onnx.load(str(out))
    _save(quantized, dst, _variant_card(card, "int8"))
    logger.info(
        "wrote int8 variant %s (%.1f MB), calibrated on %d patches", dst, dst.stat().st_size / 1e6, len(calibration)
    )
    return dst


def predict(
    path: str | os.PathLike,
    images: np.ndarray,
    *,
    batch_size: int = 8,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> np.ndarray:
    """Probabilities (N, C+1, H, W) of an exported model on normalised images, batch by batch."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=list(providers))
    input_name = session.get_inputs()[0].name
    outs = [
        session.run([session.get_outputs()[0].name], {input_name: images[i : i + batch_size]})[0]
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(outs).astype(np.float32)


@dataclass
class VariantScore:
    """One precision's numbers on the validation patches."""

    precision: str
    path: str
    dice: float | None
    dice_vs_fp32: float
    prob_max_abs_diff: float
    argmax_agreement: float


@dataclass
class VariantReport:
    """Dice of each precision on the same validation patches (``dice`` None when they have no labels)."""

    data: str
    num_patches: int
    scores: dict[str, VariantScore] = field(default_factory=dict)

    def loss(self, precision: str) -> float:
        """Dice points lost against fp32: on labels when available, else ``100 - dice_vs_fp32``."""
        s, ref = self.scores[precision], self.scores["fp32"]
        if s.dice is not None and ref.dice is not None:
            return ref.dice - s.dice
        return 100.0 - s.dice_vs_fp32

    def to_dict(self) -> dict:
        """JSON-friendly form (with the loss of each variant)."""
        return {
            "data": self.data,
            "num_patches": self.num_patches,
            "scores": {
                k: {**dataclasses.asdict(v), "dice_loss": None if k == "fp32" else self.loss(k)}
                for k, v in self.scores.items()
            },
        }

    def table(self) -> str:
        """Markdown table of the scores."""
        lines = [
            f"Validation on {self.data} ({self.num_patches} patches)",
            "",
            "| precision | Dice | loss vs fp32 (points) | Dice vs fp32 prediction | max abs prob diff | argmax agreement |",  # noqa: E501
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for k, s in self.scores.items():
            dice = "n/a (no labels)" if s.dice is None else f"{s.dice:.2f}"
            loss = "-" if k == "fp32" else f"{self.loss(k):+.2f}"
            lines.append(
                f"| {k} | {dice} | {loss} | {s.dice_vs_fp32:.2f} | {s.prob_max_abs_diff:.2e} | {s.argmax_agreement:.4%} |"  # noqa: E501
            )
        return "\n".join(lines)


def evaluate_variants(
    fp32_path: str | os.PathLike,
    variants: dict[str, str | os.PathLike],
    validation: PatchSet,
    *,
    batch_size: int = 8,
    providers: Sequence[str] = ("CPUExecutionProvider",),
) -> VariantReport:
    """Dice of fp32 and each variant on ``validation`` (ONNX Runtime, the given providers).

    ``dice`` is against ``validation.labels`` when present; ``dice_vs_fp32`` always compares the
    variant's label map with fp32's.
    """
    card = card_from_model(load_onnx(fp32_path, load_weights=False), source=str(fp32_path))
    c = card.num_classes
    ref_probs = predict(fp32_path, validation.images, batch_size=batch_size, providers=providers)
    ref_pred = ref_probs.argmax(1)
    report = VariantReport(validation.description, len(validation))
    for precision, path in {"fp32": fp32_path, **variants}.items():
        probs = (
            ref_probs
            if precision == "fp32"
            else predict(path, validation.images, batch_size=batch_size, providers=providers)
        )
        pred = probs.argmax(1)
        report.scores[precision] = VariantScore(
            precision=precision,
            path=str(path),
            dice=None if validation.labels is None else dice_points(pred, validation.labels, c),
            dice_vs_fp32=dice_points(pred, ref_pred, c),
            prob_max_abs_diff=float(np.abs(probs - ref_probs).max()),
            argmax_agreement=float((pred == ref_pred).mean()),
        )
    return report


def check_int8(report: VariantReport, *, max_loss: float = MAX_INT8_DICE_LOSS, force: bool = False) -> None:
    """Raise ``VariantError`` when int8 loses more than ``max_loss`` Dice points (unless ``force``)."""
    if "int8" not in report.scores:
        raise ValueError("report has no int8 score")
    loss = report.loss("int8")
    if loss > max_loss:
        basis = "on labels" if report.scores["int8"].dice is not None else "against fp32 predictions (no labels)"
        message = f"int8 loses {loss:.2f} Dice points {basis}, more than the {max_loss:g} allowed"
        if not force:
            raise VariantError(message + "; re-run with --force to keep it anyway", report)
        logger.warning("%s; kept because forced", message)


@dataclass
class VariantsOutcome:
    """What ``build_variants`` wrote (precision -> path) and measured."""

    paths: dict[str, Path]
    report: VariantReport | None


def build_variants(
    fp32_path: str | os.PathLike,
    *,
    fp16: bool = False,
    int8_calibration: PatchSet | None = None,
    validation: PatchSet | None = None,
    force: bool = False,
    max_int8_loss: float = MAX_INT8_DICE_LOSS,
    method: str = "minmax",
    batch_size: int = 8,
) -> VariantsOutcome:
    """Make the requested variants next to ``fp32_path``, measure them, refuse a lossy int8.

    Args:
        fp32_path: the fp32 export.
        fp16: make ``<name>.fp16.onnx``.
        int8_calibration: make ``<name>.int8.onnx`` calibrated on these patches.
        validation: patches for the Dice comparison (default: the calibration patches, which flatters
            int8; the report's ``data`` says which were used).
        force: keep an int8 model that loses more than ``max_int8_loss`` Dice points.
        max_int8_loss: allowed int8 loss in Dice points.
        method: int8 calibration method.
        batch_size: patches per ONNX Runtime run.

    Raises:
        VariantError: conversion failed, or int8 was refused (its file is then removed).
    """
    paths: dict[str, Path] = {}
    if fp16:
        paths["fp16"] = make_fp16(fp32_path)
    if int8_calibration is not None:
        paths["int8"] = make_int8(fp32_path, int8_calibration, method=method, batch_size=batch_size)
    data = validation
    if data is None and int8_calibration is not None:
        data = dataclasses.replace(int8_calibration, description=f"{int8_calibration.description} (calibration set)")
    report = None
    if data is not None and paths:
        report = evaluate_variants(fp32_path, paths, data, batch_size=batch_size)
        for precision, path in paths.items():
            _record_dice_loss(path, report.loss(precision))
        if "int8" in paths:
            try:
                check_int8(report, max_loss=max_int8_loss, force=force)
            except VariantError:
                paths["int8"].unlink(missing_ok=True)
                sidecar_path(paths["int8"]).unlink(missing_ok=True)
                raise
    elif paths:
        logger.warning("no validation patches: variants written without a Dice comparison")
    return VariantsOutcome(paths, report)


__all__ = [
    "CALIBRATION_METHODS",
    "MAX_INT8_DICE_LOSS",
    "QUANTIZED_OPS",
    "VariantError",
    "VariantReport",
    "VariantScore",
    "VariantsOutcome",
    "build_variants",
    "check_int8",
    "evaluate_variants",
    "make_fp16",
    "make_int8",
    "predict",
    "sidecar_path",
    "variant_path",
]
