"""Export of every model kind: parity with PyTorch at two sizes, graph contract, metadata round trip."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from model_export.checkpoint import file_sha256, load_checkpoint
from model_export.export import ParityError, check_parity, export_model
from model_export.export.onnx_export import default_sizes
from model_export.nets import MODEL_NAMES
from msdn_core.card import CARD_KEY
from msdn_core.onnx_model import read_model_card, read_sidecar

ATOL = 1e-4


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_default_sizes_match_the_issue_example():
    assert default_sizes((128, 128)) == ((128, 128), (96, 160))
    assert default_sizes((64, 64)) == ((64, 64), (32, 96))
    assert default_sizes((20, 30)) == ((32, 32), (64, 64))


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_segmentation_export_parity_and_contract(name, exported, checkpoints):
    result, model = exported(name)
    # The parity check ran at the export size (batch 2) and a second size (batch 1).
    shapes = [c.shape for c in result.parity.cases]
    assert shapes == [(2, 1, 64, 64), (1, 1, 32, 96)]
    for case in result.parity.cases:
        assert case.prob_max_abs_diff <= ATOL
        assert case.argmax_agreement == 1.0
    # One self-contained file plus its card; no external data.
    assert sorted(p.name for p in result.path.parent.iterdir()) == ["model.card.json", "model.onnx"]
    proto = onnx.load(str(result.path), load_external_data=False)
    assert not any(onnx.external_data_helper.uses_external_data(t) for t in proto.graph.initializer)
    onnx.checker.check_model(str(result.path), full_check=True)
    assert [i.name for i in proto.graph.input] == ["image"]
    assert [o.name for o in proto.graph.output] == ["probabilities"]
    assert _dims(proto.graph.input[0]) == ["batch", 1, "height", "width"]
    assert _dims(proto.graph.output[0]) == ["batch", 2, "height", "width"]
    assert proto.opset_import[0].version == 18
    # A third size and batch, checked here against the model's own segment().
    x = np.random.default_rng(5).standard_normal((3, 1, 48, 80), dtype=np.float32)
    got = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(None, {"image": x})[0]
    with torch.no_grad():
        ref = model.segment(torch.from_numpy(x)).numpy()
    assert got.shape == (3, 2, 48, 80)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    assert np.abs(got - ref).max() <= ATOL
    assert (got.argmax(1) == ref.argmax(1)).all()


@pytest.mark.parametrize("name", ["msdn", "ms_net"])
def test_detection_export_decodes_boxes_in_graph(name, exported):
    result, model = exported(name, detection=True)
    assert [c.box_within_tolerance for c in result.parity.cases] == [True, True]
    assert all(c.score_max_abs_diff <= ATOL for c in result.parity.cases)
    proto = onnx.load(str(result.path))
    assert [o.name for o in proto.graph.output] == ["probabilities", "det_scores", "det_boxes"]
    assert _dims(proto.graph.output[1]) == ["batch", "anchors", 1]
    assert _dims(proto.graph.output[2]) == ["batch", "anchors", 4]
    assert result.card.outputs == {
        "segmentation": "probabilities",
        "detection": {"scores": "det_scores", "boxes": "det_boxes"},
    }
    # 48x80 input, detection strides (8, 4, 2), A = 9 anchors: N = 9 * (6*10 + 12*20 + 24*40).
    x = np.random.default_rng(6).standard_normal((2, 1, 48, 80), dtype=np.float32)
    _, scores, boxes = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"]).run(
        None, {"image": x}
    )
    assert scores.shape == (2, 9 * (60 + 240 + 960), 1) and boxes.shape == (2, 9 * 1260, 4)
    assert scores.min() >= 0.0 and scores.max() <= 1.0
    with torch.no_grad():
        out = model(torch.from_numpy(x))
        ref_scores, ref_boxes = model.det_unit.detect(out["cls_logits"], out["box_deltas"], out["det_sizes"])
    np.testing.assert_allclose(scores, ref_scores.numpy(), atol=ATOL)
    np.testing.assert_allclose(boxes, ref_boxes.numpy(), atol=1e-3, rtol=1e-5)
    # First anchor of the stride-8 level: centre (4, 4), ratio 0.5 and scale 1 -> 32 / sqrt(0.5) wide,
    # 32 * sqrt(0.5) high; random-init deltas are small, so the decoded box stays close to it.
    w, h = 32 / np.sqrt(0.5), 32 * np.sqrt(0.5)
    np.testing.assert_allclose(boxes[0, 0], [4 - w / 2, 4 - h / 2, 4 + w / 2, 4 + h / 2], atol=1.0)


def test_detection_refused_for_models_without_detection_unit(checkpoints, tmp_path):
    from model_export.export import export_checkpoint

    with pytest.raises(ValueError, match="no detection unit"):
        export_checkpoint(checkpoints["msdn_minus"], tmp_path / "m.onnx", with_detection=True)
    assert not list(tmp_path.iterdir())


def test_metadata_round_trip(exported, checkpoints):
    result, _ = exported("msdn")
    card = read_model_card(result.path)
    assert card == result.card == read_sidecar(result.path)
    _, ckpt_card, _ = load_checkpoint(checkpoints["msdn"])
    assert card.checkpoint_sha256 == file_sha256(checkpoints["msdn"])
    assert card.name == ckpt_card.name == "msdn-msdn" and card.method == "msdn"
    assert [(c.value, c.name) for c in card.classes] == [(1, "nodule")]
    assert (card.input.mean, card.input.std, card.input.clip) == (-400.0, 350.0, [-1000.0, 600.0])
    assert card.input.patch_size == [64, 64] and card.input.size_multiple == 16 and card.input.channels == 1
    assert card.training == {"data": "random init (tests)"} and card.validation_dice == 0.5
    assert card.opset == 18 and card.precision == "fp32" and card.architecture["base_channels"] == 8
    exported_at = dt.datetime.fromisoformat(card.export_date)
    assert exported_at.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.timezone.utc) - exported_at).total_seconds()) < 3600
    props = {p.key: p.value for p in onnx.load(str(result.path), load_external_data=False).metadata_props}
    assert json.loads(props[CARD_KEY]) == card.to_dict()
    assert props["msdn.method"] == "msdn" and props["msdn.opset"] == "18"
    assert json.loads(props["msdn.classes"]) == {"1": "nodule"}
    assert props["msdn.checkpoint_sha256"] == card.checkpoint_sha256


def test_parity_check_catches_a_different_model(exported, checkpoints, tmp_path):
    from model_export.nets import build_from_config

    result, model = exported("unet")
    torch.manual_seed(123)
    other = build_from_config(model.config).eval()  # same architecture, other weights
    with pytest.raises(ParityError, match="disagrees with PyTorch") as info:
        check_parity(other, result.path, sizes=[(64, 64), (32, 96)])
    assert not info.value.report.passed
    report = check_parity(other, result.path, sizes=[(32, 32)], raise_on_failure=False)
    assert report.cases[0].prob_max_abs_diff > ATOL


def test_failed_parity_leaves_nothing_behind(checkpoints, tmp_path):
    model, card, _ = load_checkpoint(checkpoints["unet"])
    out = tmp_path / "strict.onnx"
    # A tolerance no float computation meets: the real parity check must refuse the export.
    with pytest.raises(ParityError, match="probabilities differ"):
        export_model(model, out, card=card, atol=1e-12)
    assert not list(tmp_path.iterdir())


def test_bad_arguments_are_named(checkpoints, tmp_path):
    model, card, _ = load_checkpoint(checkpoints["unet"])
    with pytest.raises(ValueError, match="opset"):
        export_model(model, tmp_path / "a.onnx", card=card, opset=11)
    with pytest.raises(ValueError, match="check_size must be multiples of 16"):
        export_model(model, tmp_path / "a.onnx", card=card, check_size=(40, 64))
    assert not list(tmp_path.iterdir())


def test_truncated_export_gives_a_clear_error(exported, tmp_path):
    from msdn_core.onnx_model import ModelFileError, open_session

    result, _ = exported("msdn")
    data = result.path.read_bytes()
    for fraction in (0.3, 0.999):
        cut = tmp_path / f"cut{fraction}.onnx"
        cut.write_bytes(data[: int(len(data) * fraction)])
        with pytest.raises(ModelFileError, match="corrupted or truncated"):
            open_session(cut)
    session, info = open_session(result.path)
    assert info.card == result.card and session.get_outputs()[0].name == "probabilities"
