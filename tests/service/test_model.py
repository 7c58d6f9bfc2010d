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
        item_pixels=16 * 16,
    )
    assert seen == [(0, (3, 2, 16, 16)), (3, (3, 2, 16, 16)), (6, (1, 2, 16, 16))]
    assert (stats.calls, stats.items) == (3, 7)
    assert runtime.warmup() >= 0 and runtime.warm
    info = runtime.describe()
    assert info["sha256"] == file_sha256(model_1c) and info["providers"] == [CPU]
    assert info["input"]["patch_size"] == [32, 32] and info["classes"] == [{"value": 1, "name": "tissue"}]


def test_batch_for_caps_the_pixels_of_a_call(model_1c):
    """Items per call: batch_size, cut so items x pixels stays within batch_max_pixels, at least 1."""
    runtime = ModelRuntime.load(model_1c, batch_size=8, batch_max_pixels=2 * 512 * 512)
    assert runtime.batch_for(512 * 512) == 2  # whole 512^2 slices: 2 per call
    assert runtime.batch_for(128 * 128) == 8  # 16 patches would fit: batch_size stays the cap
    assert runtime.batch_for(256 * 256) == 8
    assert runtime.batch_for(300 * 300) == 5  # 524288 // 90000
    assert runtime.batch_for(1024 * 1024) == 1  # larger than the budget: one per call
    runtime.batch_max_pixels = 0  # no limit
    assert runtime.batch_for(1024 * 1024) == 8
    with pytest.raises(ValueError, match="item_pixels"):
        runtime.batch_for(0)
    with pytest.raises(ValueError, match="batch_max_pixels"):
        ModelRuntime.load(model_1c, batch_max_pixels=-1)


def test_run_batched_sizes_batches_by_pixels_and_reports_them_to_check(model_1c):
    runtime = ModelRuntime.load(model_1c, batch_size=8, batch_max_pixels=3 * 16 * 16)
    x = np.random.default_rng(2).normal(0.0, 100.0, (7, 1, 16, 16)).astype(np.float32)
    made, checked, got = [], [], {}

    def make(a, b):
        made.append((a, b))
        return x[a:b]

    stats = runtime.run_batched(
        7,
        make,
        lambda start, out: got.update({start: out["probabilities"]}),
        item_pixels=16 * 16,
        check=lambda: checked.append(runtime.next_batch_items()),
    )
    assert made == [(0, 3), (3, 6), (6, 7)] and (stats.calls, stats.items) == (3, 7)
    assert checked == [3, 3, 1] and runtime.next_batch_items() == 0
    np.testing.assert_array_equal(np.concatenate([got[k] for k in sorted(got)]), runtime.run(x)["probabilities"])
    # 32x32 items: 768 // 1024 = 0 -> one per call
    runtime.run_batched(2, lambda a, b: np.zeros((b - a, 1, 32, 32), np.float32), lambda s, o: None, item_pixels=1024)
    assert runtime.batch_for(1024) == 1


def test_intra_op_spinning_setting_reaches_the_session(model_1c):
    key = "session.intra_op.allow_spinning"
    quiet = ModelRuntime.load(model_1c)  # the default: worker threads sleep
    assert quiet.session.get_session_options().get_session_config_entry(key) == "0"
    spinning = ModelRuntime.load(model_1c, intra_op_spinning=True)
    assert spinning.session.get_session_options().get_session_config_entry(key) == "1"
    x = np.random.default_rng(1).normal(0.0, 100.0, (2, 1, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(quiet.run(x)["probabilities"], spinning.run(x)["probabilities"])
