"""The torch-free reader of exported models: card round trip and clear errors for unusable files.

The models here are built with ``onnx.helper`` (a 1x1 convolution and a softmax), so this module's tests
need neither PyTorch nor the exporter.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from msdn_core.card import CARD_KEY, ClassInfo, InputSpec, ModelCard
from msdn_core.onnx_model import (
    ModelFileError,
    inspect_model,
    open_session,
    read_model_card,
    read_sidecar,
    save_model,
    sidecar_path,
)

WEIGHT = np.array([[[[-2.0]]], [[[3.0]]]], dtype=np.float32)  # (2, 1, 1, 1)
BIAS = np.array([0.5, -0.25], dtype=np.float32)


def tiny_model() -> onnx.ModelProto:
    """image (B, 1, H, W) -> softmax(conv1x1(image)) (B, 2, H, W)."""
    dims = ["batch", 1, "height", "width"]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["image", "w", "b"], ["logits"], name="conv"),
            helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2, "height", "width"])],
        initializer=[numpy_helper.from_array(WEIGHT, "w"), numpy_helper.from_array(BIAS, "b")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def tiny_card(**changes) -> ModelCard:
    card = ModelCard(
        name="msdn-tiny",
        method="unet",
        classes=[ClassInfo(1, "nodule")],
        input=InputSpec(channels=1, mean=-500.0, std=400.0, clip=[-1000.0, 400.0], patch_size=[128, 128]),
        validation_dice=0.81,
        checkpoint_sha256="ab" * 32,
        export_date="2025-01-02T03:04:05+00:00",
        opset=18,
        training={"data": "LIDC subset"},
    )
    for k, v in changes.items():
        setattr(card, k, v)
    return card


@pytest.fixture
def model_file(tmp_path):
    return save_model(tiny_model(), tmp_path / "tiny.onnx", tiny_card())


def test_module_does_not_import_torch():
    code = "import sys, msdn_core.onnx_model; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_card_round_trip_embedded_and_sidecar(model_file):
    card = read_model_card(model_file)
    assert card == tiny_card()
    assert read_sidecar(model_file) == card
    assert sidecar_path(model_file).name == "tiny.card.json"
    props = {p.key: p.value for p in onnx.load(str(model_file)).metadata_props}
    assert json.loads(props[CARD_KEY])["input"]["clip"] == [-1000.0, 400.0]
    assert props["msdn.input.mean"] == "-500.0" and props["msdn.precision"] == "fp32"
    # The card survives without the sidecar: the .onnx alone is enough.
    sidecar_path(model_file).unlink()
    assert read_model_card(model_file) == card


def test_open_session_runs_the_model(model_file):
    session, info = open_session(model_file)
    assert info.input_names == ("image",) and info.output_names == ("probabilities",)
    assert info.opset == 18 and not info.has_detection
    x = np.array([[[[0.0, 1.0], [-1.0, 2.0]]]], dtype=np.float32)
    probs = session.run(None, {"image": x})[0]
    logits = np.stack([-2.0 * x[:, 0] + 0.5, 3.0 * x[:, 0] - 0.25], axis=1)
    expected = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(probs, expected, rtol=1e-6)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.98])
def test_truncated_file_gives_a_clear_error(model_file, tmp_path, fraction):
    data = model_file.read_bytes()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelFileError, match=r"cut\.onnx") as info:
        read_model_card(cut)
    assert any(
        s in str(info.value) for s in ("corrupted or truncated", "no msdn model card", "not an ONNX model", "checker")
    )


def test_truncated_weights_fail_the_checker_or_parse(tmp_path):
    # Bigger weights so that a cut lands inside the initializer's raw bytes.
    model = tiny_model()
    big = numpy_helper.from_array(np.zeros((64, 64), np.float32), "unused_weight")
    model.graph.initializer.append(big)
    path = save_model(model, tmp_path / "big.onnx", tiny_card())
    data = path.read_bytes()
    start = data.find(big.raw_data[:8]) if big.raw_data else len(data) // 2
    path.write_bytes(data[: start + 100])
    with pytest.raises(ModelFileError, match="big.onnx"):
        read_model_card(path)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "empty"),
        (b"hello, I am a text file\n", "not"),
        (bytes(range(256)) * 40, "not"),
        (b"PK\x03\x04" + b"\x00" * 200, "not"),  # a zip (e.g. a PyTorch checkpoint)
    ],
)
def test_not_an_onnx_file(tmp_path, content, message):
    path = tmp_path / "x.onnx"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        read_model_card(path)


def test_missing_file(tmp_path):
    with pytest.raises(ModelFileError, match="not found"):
        read_model_card(tmp_path / "nope.onnx")
    with pytest.raises(ModelFileError, match="not found"):
        read_sidecar(tmp_path / "nope.onnx")


def test_model_without_card(tmp_path):
    path = tmp_path / "plain.onnx"
    onnx.save(tiny_model(), str(path))
    with pytest.raises(ModelFileError, match="no msdn model card"):
        read_model_card(path)


def test_card_that_does_not_match_the_graph(tmp_path):
    card = tiny_card(outputs={"segmentation": "probabilities", "detection": {"scores": "s", "boxes": "b"}})
    path = save_model(tiny_model(), tmp_path / "m.onnx", card)
    with pytest.raises(ModelFileError, match="do not match the card"):
        read_model_card(path)


def test_invalid_card_json(tmp_path):
    model = tiny_model()
    entry = model.metadata_props.add()
    entry.key, entry.value = CARD_KEY, '{"name": "x"'
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelFileError, match="invalid model card"):
        read_model_card(path)
    bad_sidecar = sidecar_path(path)
    bad_sidecar.write_text("{}")
    with pytest.raises(ModelFileError, match="not a valid model card"):
        read_sidecar(path)


def test_inspect_reports_detection_outputs(tmp_path):
    model = tiny_model()
    # Two extra outputs named as the card's detection outputs.
    model.graph.node.append(helper.make_node("Identity", ["logits"], ["det_scores"], name="s"))
    model.graph.node.append(helper.make_node("Identity", ["logits"], ["det_boxes"], name="b"))
    for name in ("det_scores", "det_boxes"):
        model.graph.output.append(
            helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", 2, "height", "width"])
        )
    card = tiny_card(
        outputs={"segmentation": "probabilities", "detection": {"scores": "det_scores", "boxes": "det_boxes"}}
    )
    info = inspect_model(save_model(model, tmp_path / "d.onnx", card))
    assert info.has_detection and info.output_names == ("probabilities", "det_scores", "det_boxes")


def test_flipped_weight_bytes_are_detected(tmp_path):
    # Corruption that keeps the protobuf valid: one weight's bytes change. The graph checksum catches it.
    path = save_model(tiny_model(), tmp_path / "m.onnx", tiny_card())
    data = bytearray(path.read_bytes())
    at = data.find(WEIGHT.tobytes())
    assert at > 0
    data[at + 2] ^= 0x40
    path.write_bytes(bytes(data))
    assert onnx.load(str(path)) is not None  # still parses
    with pytest.raises(ModelFileError, match="corrupted: its graph does not match the checksum"):
        read_model_card(path)
