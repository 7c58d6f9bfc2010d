"""Real ONNX graphs for tests and benchmarks, built with ``onnx.helper`` (no PyTorch).

They follow the export contract (``msdn_core.card``): input ``image`` (B, 1, H, W) float32 with
dynamic batch/height/width, output ``probabilities`` (B, C+1, H, W) softmax, the card JSON in
``metadata_props[CARD_KEY]``; detecting models add ``det_scores`` (B, N, C) and ``det_boxes`` (B, N, 4).

``threshold_model``: a 1x1 convolution + softmax whose label is the number of class thresholds the
*normalised* pixel exceeds, so expected masks follow by hand from the input's Hounsfield units:
with thresholds t_1 < ... < t_C (in HU), a pixel of value v gets label #{c : v > t_c}.
Channel c's logit is ``sum_{i<=c} k * (x - n(t_i))`` with ``n`` the card's normalisation, so
successive logit differences are ``k * (x - n(t_c))``, decreasing in c: the argmax is that count.

With ``detection_cell=s`` the graph also proposes the s x s grid cells: score of class c = the
largest probability of channel c in the cell, box = the cell ``[j*s, i*s, (j+1)*s, (i+1)*s]``.

``conv_model``: a stack of 3x3 convolutions with random weights, of tunable cost, for benchmarks; its
mask is close to "above a threshold" so that outputs look like real segmentations.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from msdn_core.card import CARD_KEY, INPUT_NAME, OUTPUT_NAME, ClassInfo, DetectionOperatingPoint, InputSpec, ModelCard

OPSET = 17


def make_card(
    *,
    name: str,
    classes: Sequence[str],
    mean: float = 0.0,
    std: float = 1.0,
    clip: Optional[Sequence[float]] = None,
    patch_size: Sequence[int] = (32, 32),
    detection: bool = False,
    score_threshold: Optional[float] = None,
    method: str = "test",
    spacing_mm: Optional[Sequence[float]] = None,
    orientation: Optional[str] = None,
) -> ModelCard:
    """A card for a test graph (``score_threshold``: a calibrated proposal threshold in its card;
    ``spacing_mm`` / ``orientation``: its model grid, ``msdn_core.grid``)."""
    outputs: dict = {"segmentation": OUTPUT_NAME}
    if detection:
        outputs["detection"] = {"scores": "det_scores", "boxes": "det_boxes"}
    return ModelCard(
        name=name,
        method=method,
        classes=[ClassInfo(i + 1, n) for i, n in enumerate(classes)],
        input=InputSpec(
            channels=1,
            mean=float(mean),
            std=float(std),
            clip=None if clip is None else [float(v) for v in clip],
            patch_size=[int(v) for v in patch_size],
            size_multiple=16,
            spacing_mm=None if spacing_mm is None else [float(v) for v in spacing_mm],
            orientation=orientation,
        ),
        version="0.0.1",
        opset=OPSET,
        outputs=outputs,
        detection=None if score_threshold is None else DetectionOperatingPoint(float(score_threshold)),
    )


def _finish(graph: onnx.GraphProto, card: ModelCard, path: Optional[Path], sidecar: bool) -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="msdn-tests")
    model.ir_version = 8
    helper.set_model_props(model, {CARD_KEY: card.to_json(), "msdn.name": card.name})
    onnx.checker.check_model(model)
    data = model.SerializeToString()
    if path is not None:
        path = Path(path)
        path.write_bytes(data)
        if sidecar:
            import hashlib

            card_dict = card.to_dict()
            card_dict["onnx_sha256"] = hashlib.sha256(data).hexdigest()
            path.with_suffix(".card.json").write_text(json.dumps(card_dict, indent=2))
    return data


def _image_input() -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, ["batch", 1, "height", "width"])


def _detection_nodes(cell: int, num_classes: int) -> tuple[list, list, list]:
    """Nodes turning ``probabilities`` into grid-cell proposals."""
    s = int(cell)
    inits = [
        numpy_helper.from_array(np.array(float(s), np.float32), "cell_f"),
        numpy_helper.from_array(np.array(0, np.int64), "zero_i"),
        numpy_helper.from_array(np.array(1, np.int64), "one_i"),
        numpy_helper.from_array(np.array([2], np.int64), "ax2"),
        numpy_helper.from_array(np.array([3], np.int64), "ax3"),
        numpy_helper.from_array(np.array([1], np.int64), "ch_start"),
        numpy_helper.from_array(np.array([num_classes + 1], np.int64), "ch_stop"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([0], np.int64), "axes0"),
        numpy_helper.from_array(np.array([1], np.int64), "axes1"),
        numpy_helper.from_array(np.array([-1, 4], np.int64), "shape_n4"),
        numpy_helper.from_array(np.array([1, 1], np.int64), "ones2"),
    ]
    n = helper.make_node
    nodes = [
        n("MaxPool", [OUTPUT_NAME], ["cellmax"], kernel_shape=[s, s], strides=[s, s]),
        n("Slice", ["cellmax", "ch_start", "ch_stop", "axis1"], ["cellfg"]),  # (B, C, h, w)
        n("Shape", ["cellfg"], ["fgshape"]),
        n("Slice", ["fgshape", "ax2", "ax3"], ["h1"]),  # [h]
        n("Slice", ["fgshape", "ax3", "ch_stop_w"], ["w1"]),  # [w]
        n("Slice", ["fgshape", "axes0", "axes1"], ["b1"]),  # [B]
        n("Slice", ["fgshape", "axes1", "ax2"], ["c1"]),  # [C]
        n("Concat", ["b1", "c1", "minus1"], ["bcn"], axis=0),
        n("Reshape", ["cellfg", "bcn"], ["scores_bcn"]),
        n("Transpose", ["scores_bcn"], ["det_scores"], perm=[0, 2, 1]),
        n("Squeeze", ["h1", "axes0"], ["h0"]),
        n("Squeeze", ["w1", "axes0"], ["w0"]),
        n("Range", ["zero_i", "h0", "one_i"], ["ys"]),
        n("Range", ["zero_i", "w0", "one_i"], ["xs"]),
        n("Concat", ["h1", "w1"], ["hw"], axis=0),
        n("Unsqueeze", ["ys", "axes1"], ["ys2"]),
        n("Unsqueeze", ["xs", "axes0"], ["xs2"]),
        n("Expand", ["ys2", "hw"], ["ygrid"]),
        n("Expand", ["xs2", "hw"], ["xgrid"]),
        n("Cast", ["ygrid"], ["yf"], to=TensorProto.FLOAT),
        n("Cast", ["xgrid"], ["xf"], to=TensorProto.FLOAT),
        n("Mul", ["xf", "cell_f"], ["x1"]),
        n("Mul", ["yf", "cell_f"], ["y1"]),
        n("Add", ["x1", "cell_f"], ["x2"]),
        n("Add", ["y1", "cell_f"], ["y2"]),
        n("Unsqueeze", ["x1", "ax2"], ["x1e"]),
        n("Unsqueeze", ["y1", "ax2"], ["y1e"]),
        n("Unsqueeze", ["x2", "ax2"], ["x2e"]),
        n("Unsqueeze", ["y2", "ax2"], ["y2e"]),
        n("Concat", ["x1e", "y1e", "x2e", "y2e"], ["grid"], axis=2),  # (h, w, 4)
        n("Reshape", ["grid", "shape_n4"], ["boxes_n4"]),
        n("Unsqueeze", ["boxes_n4", "axes0"], ["boxes_1n4"]),
        n("Concat", ["b1", "ones2"], ["b11"], axis=0),
        n("Expand", ["boxes_1n4", "b11"], ["det_boxes"]),
    ]
    inits += [
        numpy_helper.from_array(np.array([4], np.int64), "ch_stop_w"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus1"),
    ]
    outputs = [
        helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, ["batch", "anchors", num_classes]),
        helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, ["batch", "anchors", 4]),
    ]
    return nodes, inits, outputs


def threshold_model(
    path: Optional[Path] = None,
    *,
    thresholds_hu: Sequence[float] = (100.0,),
    classes: Optional[Sequence[str]] = None,
    mean: float = 0.0,
    std: float = 100.0,
    clip: Optional[Sequence[float]] = None,
    sharpness: float = 20.0,
    patch_size: Sequence[int] = (32, 32),
    detection_cell: Optional[int] = None,
    score_threshold: Optional[float] = None,
    name: str = "threshold",
    sidecar: bool = False,
    spacing_mm: Optional[Sequence[float]] = None,
    orientation: Optional[str] = None,
) -> bytes:
    """The threshold model (see module docstring); writes ``path`` when given, returns the bytes.

    Args:
        thresholds_hu: increasing class thresholds in input units, one per class.
        classes: class names (default ``class_1``...).
        mean, std, clip: the card's normalisation.
        sharpness: k, the logit slope on the normalised scale.
        patch_size: the card's patch size (box crops).
        detection_cell: add grid-cell proposals of this size (pixels).
        score_threshold: with ``detection_cell``, a calibrated proposal threshold in the card
            (``detection.score_threshold``, as ``msdn calibrate`` writes it).
        sidecar: also write ``<path>.card.json`` with the file's SHA-256.
        spacing_mm, orientation: the card's model grid (``msdn_core.grid``; None: inputs on their own grid).
    """
    t = [(float(v) - mean) / std for v in thresholds_hu]
    if sorted(t) != t or len(set(t)) != len(t):
        raise ValueError(f"thresholds_hu must be strictly increasing, got {thresholds_hu!r}")
    num_classes = len(t)
    names = list(classes) if classes else [f"class_{i}" for i in range(1, num_classes + 1)]
    k = float(sharpness)
    weights = np.array([c * k for c in range(num_classes + 1)], np.float32).reshape(-1, 1, 1, 1)
    bias = np.array([-k * sum(t[:c]) for c in range(num_classes + 1)], np.float32)
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "w", "b"], ["logits"], kernel_shape=[1, 1]),
        helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=1),
    ]
    inits = [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")]
    outputs = [
        helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", num_classes + 1, "height", "width"])
    ]
    if detection_cell:
        det_nodes, det_inits, det_outputs = _detection_nodes(detection_cell, num_classes)
        nodes += det_nodes
        inits += det_inits
        outputs += det_outputs
    graph = helper.make_graph(nodes, name, [_image_input()], outputs, initializer=inits)
    card = make_card(
        name=name,
        classes=names,
        mean=mean,
        std=std,
        clip=clip,
        patch_size=patch_size,
        detection=bool(detection_cell),
        score_threshold=score_threshold,
        spacing_mm=spacing_mm,
        orientation=orientation,
    )
    return _finish(graph, card, path, sidecar)


def expected_labels(
    hu: np.ndarray, thresholds_hu: Sequence[float], clip: Optional[Sequence[float]] = None
) -> np.ndarray:
    """The threshold model's labels for an image in HU, computed without the model."""
    values = np.asarray(hu, np.float64)
    if clip is not None:
        values = np.clip(values, clip[0], clip[1])
    labels = np.zeros(values.shape, np.uint8)
    for t in thresholds_hu:
        labels += (values > t).astype(np.uint8)
    return labels


def conv_model(
    path: Optional[Path] = None,
    *,
    channels: int = 16,
    layers: int = 4,
    threshold_hu: Optional[float] = 200.0,
    patch_size: Sequence[int] = (128, 128),
    seed: int = 0,
    name: str = "conv-bench",
) -> bytes:
    """A one-class model of tunable cost for benchmarks: a random 3x3-conv + ReLU stack.

    Cost per pixel is about ``2 * 9 * channels**2 * (layers - 1)`` FLOPs. The final 1x1 convolution
    sees the features and the input; with ``threshold_hu`` the input weighs in strongly, so the mask
    is (nearly) "HU above the threshold", shaped like a real segmentation rather than random speckle,
    while the features still have to be computed (their weights are small, not zero).
    """
    mean, std = -500.0, 500.0
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    current, in_ch = INPUT_NAME, 1
    for i in range(layers):
        w = (rng.standard_normal((channels, in_ch, 3, 3)) * np.sqrt(2.0 / (9 * in_ch))).astype(np.float32)
        b = np.zeros(channels, np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(
            helper.make_node("Conv", [current, f"w{i}", f"b{i}"], [f"c{i}"], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
        )
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        current, in_ch = f"r{i}", channels
    nodes.append(helper.make_node("Concat", [INPUT_NAME, current], ["head_in"], axis=1))
    w = np.zeros((2, in_ch + 1, 1, 1), np.float32)
    bias = np.zeros(2, np.float32)
    if threshold_hu is None:
        w[:, 1:, 0, 0] = rng.standard_normal((2, in_ch)) * 0.1
    else:
        k = 20.0
        w[1, 0, 0, 0] = k
        w[1, 1:, 0, 0] = rng.standard_normal(in_ch) * 1e-3
        bias[1] = -k * (threshold_hu - mean) / std
    inits += [numpy_helper.from_array(w, "wout"), numpy_helper.from_array(bias, "bout")]
    nodes.append(helper.make_node("Conv", ["head_in", "wout", "bout"], ["logits"], kernel_shape=[1, 1]))
    nodes.append(helper.make_node("Softmax", ["logits"], [OUTPUT_NAME], axis=1))
    outputs = [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, ["batch", 2, "height", "width"])]
    graph = helper.make_graph(nodes, name, [_image_input()], outputs, initializer=inits)
    card = make_card(
        name=name,
        classes=["lesion"],
        mean=mean,
        std=std,
        clip=(-1000.0, 1000.0),
        patch_size=patch_size,
        method="benchmark",
    )
    return _finish(graph, card, path, sidecar=False)
