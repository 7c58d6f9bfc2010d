"""Read, validate and annotate exported ONNX models; torch-free (the service imports it).

An exported model carries its ``ModelCard`` as JSON under ``metadata_props[CARD_KEY]`` plus flat
``msdn.*`` keys for tools that only list metadata (Netron, ``onnx`` scripts). The same card is written
beside the model as ``<model>.card.json`` (``sidecar_path``); the embedded one is authoritative, so a
model runs from the ``.onnx`` file alone.

>>> card = read_model_card("model.onnx")  # doctest: +SKIP
>>> card.input.mean, [c.name for c in card.classes]  # doctest: +SKIP

Every failure to use a file raises ``ModelFileError`` with a message that says what is wrong with it
(missing, empty, truncated or corrupted, not an ONNX model, no or bad model card, tensor names that
disagree with the card).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.message import DecodeError

from msdn_core.card import CARD_KEY, ModelCard
from msdn_core.digest import file_sha256

logger = logging.getLogger(__name__)

#: Prefix of the flat metadata keys written next to ``CARD_KEY``.
FLAT_PREFIX = "msdn."
#: Metadata key of the SHA-256 of the serialised graph (nodes and weights), checked on load.
GRAPH_SHA256_KEY = "msdn.graph_sha256"
#: Key of the sidecar card holding the SHA-256 of the ``.onnx`` file it describes (checked by the service).
SIDECAR_SHA_KEY = "onnx_sha256"
#: Precisions an exported model can have (``ModelCard.precision``).
PRECISIONS = ("fp32", "fp16", "int8")


class ModelFileError(ValueError):
    """An ONNX model file cannot be used; the message names the file and says why."""


def variant_path(fp32_path: str | os.PathLike, precision: str) -> Path:
    """``model.onnx`` -> ``model.fp16.onnx`` / ``model.int8.onnx`` (where ``msdn export`` writes variants)."""
    p = Path(fp32_path)
    return p.with_name(f"{p.stem}.{precision}{p.suffix or '.onnx'}")


def sidecar_path(model_path: str | os.PathLike) -> Path:
    """``<name>.card.json`` next to ``<name>.onnx``."""
    return Path(model_path).with_suffix(".card.json")


def flat_metadata(card: ModelCard) -> dict[str, str]:
    """The flat ``msdn.*`` keys written next to the card JSON (strings, for metadata listings)."""
    spec = card.input
    flat: dict[str, Any] = {
        "name": card.name,
        "method": card.method,
        "version": card.version,
        "precision": card.precision,
        "opset": card.opset,
        "export_date": card.export_date,
        "checkpoint_sha256": card.checkpoint_sha256,
        "validation_dice": card.validation_dice,
        "classes": json.dumps({str(c.value): c.name for c in card.classes}),
        "input_name": card.input_name,
        "outputs": json.dumps(card.outputs, sort_keys=True),
        "input.channels": spec.channels,
        "input.mean": spec.mean,
        "input.std": spec.std,
        "input.clip": json.dumps(spec.clip),
        "input.patch_size": json.dumps(spec.patch_size),
        "input.size_multiple": spec.size_multiple,
    }
    return {FLAT_PREFIX + k: str(v) for k, v in flat.items() if v is not None}


def graph_sha256(model: onnx.ModelProto) -> str:
    """SHA-256 of the serialised graph (nodes, initializers, names): detects corrupted weights."""
    return hashlib.sha256(model.graph.SerializeToString(deterministic=True)).hexdigest()


def embed_card(model: onnx.ModelProto, card: ModelCard) -> None:
    """Write ``card`` into ``model.metadata_props`` (replacing any earlier msdn keys) and doc strings.

    Also records ``graph_sha256`` under ``GRAPH_SHA256_KEY``: call it after the last graph change.
    """
    if card.precision not in PRECISIONS:
        raise ValueError(f"card.precision must be one of {PRECISIONS}, got {card.precision!r}")
    keep = [(p.key, p.value) for p in model.metadata_props if p.key != CARD_KEY and not p.key.startswith(FLAT_PREFIX)]
    del model.metadata_props[:]
    classes = ", ".join(f"{c.value}={c.name}" for c in card.classes)
    model.graph.doc_string = f"{card.name} segmentation: classes {classes}"
    entries = [(CARD_KEY, card.to_json()), *flat_metadata(card).items(), (GRAPH_SHA256_KEY, graph_sha256(model))]
    for key, value in keep + entries:
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = (
        f"{card.name} ({card.method}, {card.precision}) segmentation; classes {classes}; "
        f"model card JSON in metadata_props[{CARD_KEY!r}]"
    )


def card_from_model(model: onnx.ModelProto, *, source: str = "model") -> ModelCard:
    """The card embedded in a loaded model.

    Raises:
        ModelFileError: no card, or a card that does not parse.
    """
    props = {p.key: p.value for p in model.metadata_props}
    if CARD_KEY not in props:
        raise ModelFileError(
            f"{source} has no msdn model card (metadata_props[{CARD_KEY!r}]); export it with `msdn export`"
        )
    try:
        return ModelCard.from_json(props[CARD_KEY])
    except ValueError as exc:
        raise ModelFileError(f"{source} has an invalid model card (metadata {CARD_KEY!r}): {exc}") from exc


def load_onnx(path: str | os.PathLike, *, load_weights: bool = True) -> onnx.ModelProto:
    """Load an ONNX file, turning every way it can be unusable into ``ModelFileError``.

    Args:
        path: the ``.onnx`` file (self-contained: exported models keep no external data).
        load_weights: also load external tensor data (exported models have none).

    Raises:
        ModelFileError: missing or empty file, bytes that are not an ONNX protobuf (corrupted or
            truncated), or a model without graph or opset.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise ModelFileError(f"model file is empty: {path}")
    try:
        model = onnx.load(str(path), load_external_data=load_weights)
    except (DecodeError, RuntimeError, OSError, ValueError) as exc:
        raise ModelFileError(f"{path} is not a readable ONNX model (corrupted or truncated?): {exc}") from exc
    if model.ir_version <= 0 or not model.opset_import or len(model.graph.node) == 0:
        raise ModelFileError(f"{path} is not an ONNX model (no IR version, opset or graph nodes)")
    return model


@dataclass(frozen=True)
class ModelInfo:
    """A validated exported model: its card and the graph's input / output names."""

    path: Path
    card: ModelCard
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    opset: int

    @property
    def has_detection(self) -> bool:
        """True when the graph also outputs detections (``card.outputs["detection"]``)."""
        return "detection" in self.card.outputs


def _card_tensor_names(card: ModelCard) -> list[str]:
    names = [card.outputs.get("segmentation")]
    det = card.outputs.get("detection")
    if det is not None:
        if not isinstance(det, dict) or set(det) != {"scores", "boxes"}:
            raise ValueError(f"card.outputs['detection'] must name 'scores' and 'boxes', got {det!r}")
        names += [det["scores"], det["boxes"]]
    return names


def validate_model(model: onnx.ModelProto, *, source: str = "model", check: bool = True) -> ModelInfo:
    """Check a loaded model against its card.

    Args:
        model: loaded ``ModelProto``.
        source: name used in error messages.
        check: also run ``onnx.checker.check_model`` (structure, types, initializer sizes).

    Raises:
        ModelFileError: the checker fails, the card is missing or bad, or the graph's tensor names
            are not those the card declares.
    """
    if check:
        try:
            onnx.checker.check_model(model)
        except onnx.checker.ValidationError as exc:
            raise ModelFileError(f"{source} fails the ONNX checker: {exc}") from exc
    props = {p.key: p.value for p in model.metadata_props}
    if GRAPH_SHA256_KEY in props and props[GRAPH_SHA256_KEY] != graph_sha256(model):
        raise ModelFileError(f"{source} is corrupted: its graph does not match the checksum recorded at export")
    card = card_from_model(model, source=source)
    initializers = {t.name for t in model.graph.initializer}
    inputs = tuple(i.name for i in model.graph.input if i.name not in initializers)
    outputs = tuple(o.name for o in model.graph.output)
    if inputs != (card.input_name,):
        raise ModelFileError(f"{source}: graph inputs {list(inputs)} do not match the card's input {card.input_name!r}")
    try:
        expected = _card_tensor_names(card)
    except ValueError as exc:
        raise ModelFileError(f"{source}: {exc}") from exc
    if list(outputs) != expected:
        raise ModelFileError(f"{source}: graph outputs {list(outputs)} do not match the card's outputs {expected}")
    if card.precision not in PRECISIONS:
        raise ModelFileError(f"{source}: unknown precision {card.precision!r} (expected one of {PRECISIONS})")
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    return ModelInfo(Path(source), card, inputs, outputs, int(opset))


def inspect_model(path: str | os.PathLike, *, check: bool = True) -> ModelInfo:
    """Load and validate an exported model file (see ``load_onnx`` and ``validate_model``)."""
    model = load_onnx(path)
    info = validate_model(model, source=str(path), check=check)
    return ModelInfo(Path(path), info.card, info.input_names, info.output_names, info.opset)


def read_model_card(path: str | os.PathLike) -> ModelCard:
    """The model card of an exported ``.onnx`` file (validated against the graph).

    Raises:
        ModelFileError: see ``inspect_model``.
    """
    return inspect_model(path).card


def read_sidecar(path: str | os.PathLike) -> ModelCard:
    """The sidecar card of ``path`` (the ``.onnx`` or the ``.card.json`` itself).

    Raises:
        ModelFileError: missing or unparsable sidecar.
    """
    path = Path(path)
    card_path = path if path.name.endswith(".card.json") else sidecar_path(path)
    if not card_path.is_file():
        raise ModelFileError(f"model card not found: {card_path}")
    return read_sidecar_with_sha(card_path)[0]


def read_sidecar_with_sha(path: str | os.PathLike) -> tuple[ModelCard, str | None]:
    """The sidecar card of ``path`` and the SHA-256 it records for the ``.onnx`` file (None if absent).

    Raises:
        ModelFileError: missing or unparsable sidecar.
    """
    path = Path(path)
    card_path = path if path.name.endswith(".card.json") else sidecar_path(path)
    if not card_path.is_file():
        raise ModelFileError(f"model card not found: {card_path}")
    try:
        data = json.loads(card_path.read_text(encoding="utf-8"))
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        expected = data.pop(SIDECAR_SHA_KEY, None)
        return ModelCard.from_dict(data), expected
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFileError(f"{card_path} is not a valid model card: {exc}") from exc


def read_card(path: str | os.PathLike, metadata: dict[str, str] | None = None) -> tuple[ModelCard, str | None]:
    """THE model card reader: the card of an ONNX file and the SHA-256 its sidecar expects (or None).

    The card embedded in ``metadata_props[CARD_KEY]`` is authoritative; a model without one is read
    from its sidecar ``<model>.card.json`` when present. Checkpoints carry the same card
    (``ModelCard.from_dict``); every other reader (service, export variants, benchmarks) calls this.

    Args:
        path: the ``.onnx`` file.
        metadata: its ``metadata_props`` when already read; read with ``onnx`` otherwise.

    Raises:
        ModelFileError: unreadable file, no card anywhere, or an unreadable card.
    """
    path = Path(path)
    sidecar = read_sidecar_with_sha(path) if sidecar_path(path).is_file() else None
    if metadata is None:
        metadata = {p.key: p.value for p in load_onnx(path, load_weights=False).metadata_props}
    if CARD_KEY in metadata:
        try:
            card = ModelCard.from_json(metadata[CARD_KEY])
        except ValueError as exc:
            raise ModelFileError(f"{path} has an invalid model card (metadata {CARD_KEY!r}): {exc}") from exc
    elif sidecar is not None:
        card = sidecar[0]
    else:
        raise ModelFileError(
            f"{path} carries no model card (metadata {CARD_KEY!r}) and has no sidecar {sidecar_path(path).name}"
        )
    return card, sidecar[1] if sidecar is not None else None


def write_sidecar(model_path: str | os.PathLike, card: ModelCard) -> Path:
    """Write ``card`` as indented JSON to ``sidecar_path(model_path)``; returns that path.

    When the model file exists, its SHA-256 is recorded under ``SIDECAR_SHA_KEY`` (the service refuses
    a model whose bytes do not match it).
    """
    out = sidecar_path(model_path)
    data = card.to_dict()
    if Path(model_path).is_file():
        data[SIDECAR_SHA_KEY] = file_sha256(model_path)
    out.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return out


def save_model(model: onnx.ModelProto, path: str | os.PathLike, card: ModelCard | None = None) -> Path:
    """Embed ``card`` (when given) and write ``model`` as one self-contained file, atomically.

    Writes the sidecar card too when ``card`` is given.

    Raises:
        ValueError: the model is over protobuf's 2 GiB limit (cannot be one file).
    """
    path = Path(path)
    if card is not None:
        embed_card(model, card)
    if model.ByteSize() >= 2**31:
        raise ValueError(f"model is {model.ByteSize()} bytes: over the 2 GiB limit of a single-file ONNX model")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    onnx.save_model(model, str(tmp), save_as_external_data=False)
    os.replace(tmp, path)
    if card is not None:
        write_sidecar(path, card)
    return path


def session_providers(device: str = "cpu") -> list[str]:
    """ONNX Runtime execution providers for ``device`` (``cpu`` or ``cuda``), CPU always last."""
    if device == "cpu":
        return ["CPUExecutionProvider"]
    if device == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


def open_session(
    path: str | os.PathLike,
    *,
    device: str = "cpu",
    threads: int | None = None,
    providers: Sequence[str] | None = None,
):
    """An ``onnxruntime.InferenceSession`` for an exported model, after validating it.

    Args:
        path: the ``.onnx`` file.
        device: ``cpu`` or ``cuda`` (ignored when ``providers`` is given).
        threads: intra-op threads (ONNX Runtime's default when None).
        providers: explicit execution providers.

    Returns:
        ``(session, info)`` with ``info`` a ``ModelInfo``.

    Raises:
        ModelFileError: the file is unusable, or ONNX Runtime refuses it.
    """
    import onnxruntime as ort

    info = inspect_model(path)
    options = ort.SessionOptions()
    if threads is not None:
        options.intra_op_num_threads = int(threads)
    try:
        session = ort.InferenceSession(str(path), options, providers=list(providers or session_providers(device)))
    except Exception as exc:  # ORT raises its own pybind exception types
        raise ModelFileError(f"ONNX Runtime cannot load {path}: {exc}") from exc
    return session, info


__all__ = [
    "FLAT_PREFIX",
    "GRAPH_SHA256_KEY",
    "PRECISIONS",
    "SIDECAR_SHA_KEY",
    "ModelFileError",
    "ModelInfo",
    "card_from_model",
    "embed_card",
    "flat_metadata",
    "graph_sha256",
    "inspect_model",
    "load_onnx",
    "open_session",
    "read_card",
    "read_model_card",
    "read_sidecar",
    "read_sidecar_with_sha",
    "save_model",
    "session_providers",
    "sidecar_path",
    "validate_model",
    "write_sidecar",
]
