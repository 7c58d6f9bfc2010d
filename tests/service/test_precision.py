"""MSDN_PRECISION on the CPU: the int8 variant ``<model>.int8.onnx`` is served by default when its card
records a Dice loss within MSDN_INT8_MAX_DICE_LOSS and the CPU has VNNI (MSDN_INT8_NEEDS_VNNI), fp32
otherwise; /v1/model says which and why. Real quantisation (onnxruntime.quantization), real ONNX
Runtime sessions; the VNNI requirement is switched off where a test needs int8 on any CPU."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from fastapi.testclient import TestClient

from service.errors import ModelLoadError
from service.main import create_app
from service.model import ModelRuntime
from service.providers import choose_precision, cpu_has_vnni
from tests.service.helpers import make_settings
from tests.support.onnx_models import conv_model


def cpu_choice(requested: str, **int8):
    """``choose_precision`` on the CPU (no fp16 variant); ``int8``: the int8 keyword arguments
    (defaults: a variant within the 0.5 budget at loss 0.1, on a VNNI CPU)."""
    args = dict(int8_file_exists=True, int8_dice_loss=0.1, int8_max_dice_loss=0.5, int8_fast=True) | int8
    return choose_precision("cpu", requested, fp16_file_exists=False, fp16_dice_loss=None, max_dice_loss=0.5, **args)


@pytest.mark.parametrize(
    ("requested", "exists", "loss", "fast", "expected", "int8_file"),
    [
        ("auto", True, 0.2, True, "int8", True),  # within the 0.5 budget, on a VNNI CPU
        ("auto", True, 0.5, True, "int8", True),  # at the budget
        ("auto", True, 0.2, False, "fp32", False),  # no VNNI: int8 would be slower than fp32
        ("auto", True, 0.51, True, "fp32", False),  # over the budget
        ("auto", True, None, True, "fp32", False),  # loss not recorded: never served by default
        ("auto", False, None, True, "fp32", False),  # no variant
        ("int8", True, 3.0, False, "int8", True),  # asked for: served, the reason gives the loss
        ("fp32", True, 0.1, True, "fp32", False),
    ],
)
def test_cpu_precision_choice(requested, exists, loss, fast, expected, int8_file):
    choice = cpu_choice(requested, int8_file_exists=exists, int8_dice_loss=loss, int8_fast=fast)
    assert (choice.precision, choice.use_int8_file, choice.use_fp16_file) == (expected, int8_file, False)
    if loss is not None and requested != "fp32":
        assert f"{loss:.2f} Dice points" in choice.reason


@pytest.mark.parametrize(
    ("requested", "expected"),
    [("auto", "fp32"), ("int8", "int8")],
)
def test_int8_detector_calibrated_on_fp32_scores_is_not_served_by_default(requested, expected):
    choice = cpu_choice(requested, int8_detector_unvalidated=True)
    assert choice.precision == expected
    if requested == "auto":
        assert "calibrated on fp32 scores" in choice.reason


@pytest.mark.parametrize(("sensitivity_loss", "expected"), [(None, "int8"), (0.05, "int8"), (0.06, "fp32")])
def test_int8_detector_losing_sensitivity_is_not_served_by_default(sensitivity_loss, expected):
    choice = cpu_choice("auto", int8_sensitivity_loss=sensitivity_loss, int8_max_sensitivity_loss=0.05)
    assert choice.precision == expected
    if expected == "fp32":
        assert "0.060 fewer of the calibration nodules" in choice.reason
    assert cpu_choice("int8", int8_sensitivity_loss=0.5).precision == "int8"


def test_committed_default_model_serves_int8_in_auto_where_int8_is_fast():
    # its int8 variant is within the Dice budget on patches, calibrated on its own scores, and its
    # detector finds as many of the 43 calibration nodules there as fp32 does (0.349 both)
    from pathlib import Path

    model = Path(__file__).resolve().parents[2] / "models" / "default.onnx"
    runtime = ModelRuntime.load(model, providers=["cpu"], int8_needs_vnni=False)
    assert runtime.precision == "int8", runtime.precision_reason
    assert "loses -0.30 Dice points" in runtime.precision_reason
    assert "finds 0.000 fewer of the calibration nodules" in runtime.precision_reason
    # with the VNNI rule (the default) it depends on this CPU; fp32 when asked for
    default = ModelRuntime.load(model, providers=["cpu"])
    assert default.precision == ("int8" if cpu_has_vnni() else "fp32"), default.precision_reason
    assert ModelRuntime.load(model, providers=["cpu"], precision="fp32").precision == "fp32"


def test_int8_refusals():
    with pytest.raises(ModelLoadError, match="needs the int8 variant"):
        choose_precision(
            "cpu", "int8", fp16_file_exists=False, fp16_dice_loss=None, max_dice_loss=0.5, int8_file_exists=False
        )
    with pytest.raises(ModelLoadError, match="int8 is for the CPU"):
        choose_precision("cuda", "int8", fp16_file_exists=True, fp16_dice_loss=0.1, max_dice_loss=0.5)


def _variants():
    """``model_export``'s variant tools (the training side: skipped where it is not installed)."""
    pytest.importorskip("torch", reason="int8 variants are made by model_export (the training stack)")
    from model_export.export.calibration import PatchSet
    from model_export.export.variants import _record_dice_loss, make_int8

    return PatchSet, _record_dice_loss, make_int8


def _record_dice_loss(path, loss):
    _variants()[1](path, loss)


@pytest.fixture(scope="module")
def fp32_and_int8(tmp_path_factory):
    PatchSet, _, make_int8 = _variants()
    folder = tmp_path_factory.mktemp("int8")
    model = folder / "m.onnx"
    conv_model(model, channels=8, layers=2, patch_size=(32, 32))
    calibration = PatchSet(np.random.default_rng(0).normal(0.0, 1.0, (8, 1, 32, 32)).astype(np.float32))
    return model, make_int8(model, calibration)


def test_auto_serves_int8_on_the_cpu_only_with_a_recorded_loss_in_budget(fp32_and_int8):
    model, int8 = fp32_and_int8
    assert int8.name == "m.int8.onnx"
    # Written by make_int8 without a measurement: not served by default.
    runtime = ModelRuntime.load(model, providers=["cpu"], int8_needs_vnni=False)
    assert (runtime.precision, runtime.path) == ("fp32", model)
    _record_dice_loss(int8, 0.2)
    runtime = ModelRuntime.load(model, providers=["cpu"], int8_needs_vnni=False)
    assert (runtime.precision, runtime.path) == ("int8", int8)
    default = ModelRuntime.load(model, providers=["cpu"])  # VNNI required (the default)
    assert default.precision == ("int8" if cpu_has_vnni() else "fp32"), default.precision_reason
    assert runtime.card.precision == "int8" and runtime.card.variant_dice_loss == pytest.approx(0.2)
    # The int8 graph really is quantised (QDQ nodes), and answers like fp32.
    assert any(n.op_type == "QuantizeLinear" for n in onnx.load(str(int8)).graph.node)
    x = np.random.default_rng(1).normal(-300.0, 400.0, (2, 1, 48, 64)).astype(np.float32)
    x = (np.clip(x, -1000, 1000) + 500.0) / 500.0
    fp32 = ModelRuntime.load(model, providers=["cpu"], precision="fp32")
    assert fp32.precision == "fp32" and fp32.path == model
    agree = (runtime.run(x)["probabilities"].argmax(1) == fp32.run(x)["probabilities"].argmax(1)).mean()
    assert agree > 0.95
    # A tighter budget than the recorded loss: fp32.
    assert (
        ModelRuntime.load(model, providers=["cpu"], int8_max_dice_loss=0.1, int8_needs_vnni=False).precision == "fp32"
    )


def test_v1_model_reports_the_int8_precision_and_its_loss(fp32_and_int8):
    model, int8 = fp32_and_int8
    _record_dice_loss(int8, 0.2)
    settings = make_settings(model, providers=["cpu"], int8_needs_vnni=False)
    assert settings.precision == "auto"
    runtime = ModelRuntime.from_settings(settings)
    with TestClient(create_app(settings, routers=[], runtime=runtime)) as client:
        info = client.get("/v1/model").json()
    assert (info["precision"], info["file"]) == ("int8", "m.int8.onnx")
    assert info["variant_dice_loss"] == pytest.approx(0.2)
    assert "within the 0.5 allowed" in info["precision_reason"]
    fp32 = ModelRuntime.from_settings(make_settings(model, providers=["cpu"], precision="fp32")).describe()
    assert (fp32["precision"], fp32["file"], fp32["variant_dice_loss"]) == ("fp32", "m.onnx", None)


def test_vnni_detection_reads_the_cpu_flags():
    flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags")).split()
    assert cpu_has_vnni() == any(f in flags for f in ("avx512_vnni", "avx_vnni", "amx_int8"))


def test_an_int8_file_of_another_model_is_never_served(tmp_path, caplog):
    """A stale ``<model>.int8.onnx`` (the fp32 model replaced, e.g. retrained) is ignored, with a warning."""
    PatchSet, record, make_int8 = _variants()
    model = tmp_path / "m.onnx"
    conv_model(model, channels=8, layers=2, patch_size=(32, 32))
    int8 = make_int8(model, PatchSet(np.random.default_rng(0).normal(0.0, 1.0, (8, 1, 32, 32)).astype(np.float32)))
    record(int8, 0.1)
    assert ModelRuntime.load(model, providers=["cpu"], int8_needs_vnni=False).precision == "int8"
    # A new fp32 model (another checkpoint) under the same name, the old int8 file still next to it.
    conv_model(model, channels=8, layers=2, patch_size=(32, 32), seed=1)
    from msdn_core.onnx_model import card_from_model, embed_card, load_onnx

    proto = load_onnx(model)
    card = card_from_model(proto, source=str(model))
    card.checkpoint_sha256 = "f" * 64
    embed_card(proto, card)
    onnx.save_model(proto, str(model))
    runtime = ModelRuntime.load(model, providers=["cpu"], int8_needs_vnni=False)
    assert (runtime.precision, runtime.path) == ("fp32", model)
    assert "m.int8.onnx is not from the checkpoint of m.onnx" in caplog.text


@pytest.mark.parametrize("arena", [True, False])
def test_batches_run_with_and_without_the_cpu_arena(fp32_and_int8, arena):
    """Arena shrinkage applies to the CPU arena only; without an arena the runs go through unchanged."""
    model, _ = fp32_and_int8
    runtime = ModelRuntime.load(model, providers=["cpu"], precision="fp32", cpu_mem_arena=arena, batch_size=3)
    assert runtime.shrink_arena is arena and runtime.overlap
    x = np.random.default_rng(4).normal(0.0, 1.0, (7, 1, 32, 32)).astype(np.float32)
    got: dict[int, np.ndarray] = {}
    stats = runtime.run_batched(
        7, lambda a, b: x[a:b], lambda start, out: got.update({start: out["probabilities"]}), item_pixels=32 * 32
    )
    assert (stats.calls, stats.items, sorted(got)) == (3, 7, [0, 3, 6])
    whole = runtime.run(x)["probabilities"]
    np.testing.assert_allclose(np.concatenate([got[k] for k in sorted(got)]), whole, atol=1e-6)
