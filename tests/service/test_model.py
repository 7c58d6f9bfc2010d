"""service.model: card reading, SHA-256 check, providers, batching, on real ONNX files."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from msdn_core.card import CARD_KEY
from service.errors import ModelLoadError
from service.model import CPU, ModelRuntime, cuda_usable, file_sha256, read_card
from tests.support.onnx_models import threshold_model


def test_card_from_metadata_and_sidecar_sha(model_1c):
    card, expected = read_card(model_1c)
    assert card.name == "threshold" and [c.name for c in card.classes] == ["tissue"]
    assert expected == file_sha256(model_1c)


def test_card_from_sidecar_when_metadata_has_none(tmp_path, model_1c):
    model = onnx.load(str(model_1c))
    del model.metadata_props[:]
    path = tmp_path / "bare.onnx"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="carries no model card"):
        read_card(path)
    shutil.copy(model_1c.with_suffix(".card.json"), path.with_suffix(".card.json"))
    card, _ = read_card(path)
    assert card.input.std == 100.0


def test_sha_mismatch_refused_unless_verification_is_off(tmp_path, caplog):
    path = tmp_path / "m.onnx"
    threshold_model(path, sidecar=True)
    sidecar = json.loads(path.with_suffix(".card.json").read_text())
    sidecar["onnx_sha256"] = "0" * 64
    path.with_suffix(".card.json").write_text(json.dumps(sidecar))
    with pytest.raises(ModelLoadError, match="expects 0000"):
        ModelRuntime.load(path, providers=[CPU])
    runtime = ModelRuntime.load(path, providers=[CPU], verify_sha256=False)
    assert runtime.sha256 == file_sha256(path)
    assert "serving anyway" in caplog.text


def test_missing_file_and_broken_card(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        ModelRuntime.load(tmp_path / "nope.onnx")
    path = tmp_path / "broken.onnx"
    threshold_model(path)
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == CARD_KEY:
            prop.value = "{not json"
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match="not valid JSON"):
        ModelRuntime.load(path, providers=[CPU])


def test_graph_must_match_its_card(tmp_path):
    path = tmp_path / "m.onnx"
    threshold_model(path)
    model = onnx.load(str(path))
    card = json.loads(next(p.value for p in model.metadata_props if p.key == CARD_KEY))
    card["outputs"] = {"segmentation": "probabilities", "detection": {"scores": "s", "boxes": "b"}}
    for prop in model.metadata_props:
        if prop.key == CARD_KEY:
            prop.value = json.dumps(card)
    onnx.save(model, str(path))
    with pytest.raises(ModelLoadError, match=r"lacks outputs \['s', 'b'\]"):
        ModelRuntime.load(path, providers=[CPU])


def test_providers_on_this_machine(model_1c):
    # This CI box has no NVIDIA driver: auto serves on the CPU even though onnxruntime-gpu lists CUDA,
    # and an explicit CUDA request fails (tests/service/test_providers.py has the rest).
    assert not cuda_usable()
    assert ModelRuntime.load(model_1c, providers=["auto"]).providers == [CPU]
    with pytest.raises(ModelLoadError, match="asks for cuda but it cannot run here"):
        ModelRuntime.load(model_1c, providers=["CUDAExecutionProvider"])
    with pytest.raises(ModelLoadError, match="unknown execution provider"):
        ModelRuntime.load(model_1c, providers=["NoSuchExecutionProvider"])


def test_run_batched_and_describe(model_1c):
    runtime = ModelRuntime.load(model_1c, batch_size=3)
    assert runtime.provider == CPU and runtime.providers == [CPU]
    seen = []
    stats = runtime.run_batched(
        7,
        lambda a, b: np.full((b - a, 1, 16, 16), 1.0, np.float32),
        lambda start, out: seen.append((start, out["probabilities"].shape)),
    )
    assert seen == [(0, (3, 2, 16, 16)), (3, (3, 2, 16, 16)), (6, (1, 2, 16, 16))]
    assert (stats.calls, stats.items) == (3, 7)
    assert runtime.warmup() >= 0 and runtime.warm
    info = runtime.describe()
    assert info["sha256"] == file_sha256(model_1c) and info["providers"] == [CPU]
    assert info["input"]["patch_size"] == [32, 32] and info["classes"] == [{"value": 1, "name": "tissue"}]
