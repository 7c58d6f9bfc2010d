"""fp16 and int8 variants of a (briefly) trained model: contract, agreement, Dice check and refusal."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from model_export.export.calibration import PatchSet
from model_export.export.variants import (
    QUANTIZED_OPS,
    VariantError,
    build_variants,
    evaluate_variants,
    make_fp16,
    make_int8,
    variant_path,
)
from msdn_core.onnx_model import read_model_card, read_sidecar


@pytest.fixture(scope="module")
def variants(trained):
    """fp16 and int8 made once from the trained fp32 export, measured on the validation discs."""
    outcome = build_variants(
        trained["onnx"], fp16=True, int8_calibration=trained["calibration"], validation=trained["validation"]
    )
    return outcome


def _run_all(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})


def _run(path, x):
    return _run_all(path, x)[0]


def test_trained_fixture_segments(trained):
    # fp32 export against the validation masks: the model really learned (else Dice checks mean little).
    report = evaluate_variants(trained["onnx"], {}, trained["validation"])
    assert report.scores["fp32"].dice > 80.0


def test_fp16_variant(trained, variants):
    path = variants.paths["fp16"]
    assert path == variant_path(trained["onnx"], "fp16") and path.name == "model.fp16.onnx"
    card = read_model_card(path)
    assert card.precision == "fp16" and read_sidecar(path) == card
    assert card.checkpoint_sha256 == read_model_card(trained["onnx"]).checkpoint_sha256
    proto = onnx.load(str(path))
    # float32 in and out, fp16 weights inside.
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    conv_weights = {n.input[1] for n in proto.graph.node if n.op_type == "Conv"}
    types = {t.data_type for t in proto.graph.initializer if t.name in conv_weights}
    assert types == {onnx.TensorProto.FLOAT16}
    # ONNX Runtime's CPU EP runs the fp16 graph: compare with PyTorch fp32.
    x = trained["validation"].images[:4]
    got = _run(path, x)
    with torch.no_grad():
        ref = trained["model"].segment(torch.from_numpy(x)).numpy()
    assert np.abs(got - ref).max() < 2e-2
    assert (got.argmax(1) == ref.argmax(1)).mean() > 0.999
    score = variants.report.scores["fp16"]
    assert abs(variants.report.loss("fp16")) < 0.5 and score.argmax_agreement > 0.999
    # The measured loss is recorded in the variant's card (embedded and sidecar) for the service to read.
    assert card.variant_dice_loss == pytest.approx(variants.report.loss("fp16"), abs=1e-4)
    assert read_model_card(trained["onnx"]).variant_dice_loss is None


def test_int8_variant_is_static_qdq_and_close_to_fp32(trained, variants):
    path = variants.paths["int8"]
    proto = onnx.load(str(path))
    ops = [n.op_type for n in proto.graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    assert "ConvInteger" not in ops and "DynamicQuantizeLinear" not in ops  # static, not dynamic
    # Per-channel weights: a weight DequantizeLinear has one scale per output channel.
    inits = {t.name: t for t in proto.graph.initializer}
    weight_dq = [
        n
        for n in proto.graph.node
        if n.op_type == "DequantizeLinear"
        and n.input[0] in inits
        and inits[n.input[0]].data_type == onnx.TensorProto.INT8
        and len(inits[n.input[0]].dims) == 4
    ]
    assert len(weight_dq) == sum(op == "Conv" for op in ops)
    for n in weight_dq:
        assert list(inits[n.input[1]].dims) == [inits[n.input[0]].dims[0]]  # one scale per output channel
    assert set(QUANTIZED_OPS) >= {"Conv"}
    card = read_model_card(path)
    assert card.precision == "int8" and card.outputs == {"segmentation": "probabilities"}
    report = variants.report
    assert report.data == "validation discs" and report.num_patches == 24
    assert report.scores["fp32"].dice > 80.0
    assert report.loss("int8") <= 0.5
    assert report.scores["int8"].argmax_agreement > 0.99
    table = report.table()
    assert "| int8 |" in table and "| fp16 |" in table


def test_lossy_int8_is_refused_and_removed(trained, tmp_path):
    import shutil

    src = tmp_path / "model.onnx"
    shutil.copy(trained["onnx"], src)
    shutil.copy(trained["onnx"].with_suffix(".card.json"), src.with_suffix(".card.json"))
    # Calibrated on images squeezed to 1/100 of their range: activations saturate on real inputs.
    squeezed = PatchSet(trained["calibration"].images * 0.01, None, "squeezed")
    with pytest.raises(VariantError, match="int8 loses .* Dice points on labels") as info:
        build_variants(src, int8_calibration=squeezed, validation=trained["validation"])
    assert info.value.report.loss("int8") > 0.5
    assert not variant_path(src, "int8").exists() and not variant_path(src, "int8").with_suffix(".card.json").exists()
    # Forced: kept, and the report still says how much it lost.
    outcome = build_variants(src, int8_calibration=squeezed, validation=trained["validation"], force=True)
    assert outcome.paths["int8"].exists() and outcome.report.loss("int8") > 0.5


def test_without_labels_the_check_uses_fp32_predictions(trained, tmp_path):
    unlabeled = PatchSet(trained["validation"].images, None, "unlabeled")
    dst = tmp_path / "m.int8.onnx"
    make_int8(trained["onnx"], trained["calibration"], dst)
    report = evaluate_variants(trained["onnx"], {"int8": dst}, unlabeled)
    assert report.scores["int8"].dice is None
    assert report.loss("int8") == pytest.approx(100.0 - report.scores["int8"].dice_vs_fp32)
    assert "n/a (no labels)" in report.table()


def test_variants_only_from_fp32(variants, tmp_path):
    with pytest.raises(VariantError, match="made from the fp32 export"):
        make_fp16(variants.paths["int8"], tmp_path / "x.onnx")


def test_variants_of_a_detection_export(exported, tmp_path):
    result, _ = exported("msdn", detection=True)
    x = np.random.default_rng(3).standard_normal((1, 1, 64, 64), dtype=np.float32)
    sess = ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
    ref = sess.run(None, {"image": x})
    fp16 = make_fp16(result.path, tmp_path / "d.fp16.onnx")
    calib = PatchSet(np.random.default_rng(4).standard_normal((8, 1, 64, 64), dtype=np.float32), None, "noise")
    int8 = make_int8(result.path, calib, tmp_path / "d.int8.onnx")
    for path, prob_tol, box_tol in ((fp16, 1e-2, 0.5), (int8, 5e-2, 8.0)):
        card = read_model_card(path)
        assert card.outputs["detection"] == {"scores": "det_scores", "boxes": "det_boxes"}
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": x})
        assert [g.shape for g in got] == [r.shape for r in ref]
        assert all(g.dtype == np.float32 for g in got)
        assert np.abs(got[0] - ref[0]).max() < prob_tol
        assert np.abs(got[1] - ref[1]).max() < prob_tol
        assert np.abs(got[2] - ref[2]).max() < box_tol


def test_int8_keeps_detection_output_convs_float(exported, tmp_path):
    result, _ = exported("ms_net", detection=True)
    calib = PatchSet(np.random.default_rng(4).standard_normal((4, 1, 64, 64), dtype=np.float32), None, "noise")
    proto = onnx.load(str(make_int8(result.path, calib, tmp_path / "q.onnx")))
    producers = {o: n for n in proto.graph.node for o in n.output}
    inits = {t.name for t in proto.graph.initializer}
    kinds = {}
    for n in proto.graph.node:
        if n.op_type != "Conv":
            continue
        w = n.input[1]
        quantized = w in producers and producers[w].op_type == "DequantizeLinear"
        name = producers[w].input[0] if quantized else w
        kinds[name] = quantized
        assert quantized or w in inits
    out_convs = [k for k in kinds if "cls_out" in k or "box_out" in k]
    assert len(out_convs) == 2 and not any(kinds[k] for k in out_convs)
    assert sum(kinds.values()) == len(kinds) - 2  # every other convolution is int8


def test_int8_boxes_hold_on_images_larger_than_the_calibration_patches(exported, tmp_path):
    # Calibrated on 64 px patches, run on a 256 px image: the anchor grids and decoded boxes must stay
    # float, else their patch-calibrated int8 ranges clamp every box to about the patch size.
    result, _ = exported("msdn", detection=True)
    calib = PatchSet(np.random.default_rng(4).standard_normal((8, 1, 64, 64), dtype=np.float32), None, "noise")
    int8 = make_int8(result.path, calib, tmp_path / "big.int8.onnx")
    x = np.random.default_rng(5).standard_normal((1, 1, 256, 256), dtype=np.float32)
    ref = _run_all(result.path, x)
    got = _run_all(int8, x)
    assert ref[2].max() > 200.0  # boxes reach across the slice, far beyond the 64 px patches
    assert np.abs(got[2] - ref[2]).max() < 8.0
    proto = onnx.load(str(int8))
    producers = {o: n for n in proto.graph.node for o in n.output}
    concats = [n for n in proto.graph.node if n.op_type == "Concat"]
    tail = [
        n for n in concats if not any(producers.get(i) and producers[i].op_type == "DequantizeLinear" for i in n.input)
    ]
    assert tail  # the float tail exists (the pyramid levels' anchors and boxes) ...
    assert len(tail) < len(concats)  # ... and the decoder's skip concatenations are still int8
