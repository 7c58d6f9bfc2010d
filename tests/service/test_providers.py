"""service.providers: MSDN_PROVIDERS parsing, no silent CPU fallback, precision choice, IO binding,
and /v1/model + /metrics reporting what is really in use. Real ONNX Runtime, real model files."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from fastapi.testclient import TestClient

from model_export.cli import main
from service.errors import ModelLoadError
from service.main import create_app
from service.model import ModelRuntime
from service.providers import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderChoice,
    TensorrtOptions,
    check_available,
    choose_precision,
    cuda_unavailable_reason,
    parse_providers,
    session_providers,
    tensorrt_unavailable_reason,
)
from tests.service.helpers import make_settings
from tests.service.test_main import upload

no_gpu = pytest.mark.skipif(cuda_unavailable_reason() is None, reason="this machine can run CUDA")


@pytest.mark.parametrize(
    ("names", "kind", "explicit"),
    [
        (["auto"], "cuda", False),
        ([], "cuda", False),
        (["cpu"], "cpu", True),
        (["CUDA"], "cuda", True),
        (["tensorrt"], "tensorrt", True),
        ([CUDA, CPU], "cuda", True),
        ([TENSORRT, CUDA, CPU], "tensorrt", True),
        ([CPU], "cpu", True),
    ],
)
def test_parse_providers(names, kind, explicit):
    assert parse_providers(names) == ProviderChoice(kind, explicit)


def test_parse_providers_refuses_unknown_and_conflicting_names():
    with pytest.raises(ModelLoadError, match="unknown execution provider 'rocm'.*auto, tensorrt, cuda or cpu"):
        parse_providers(["rocm"])
    with pytest.raises(ModelLoadError, match="name one GPU provider"):
        parse_providers(["cuda", "tensorrt"])


def test_session_providers_keep_the_fallbacks_behind():
    assert session_providers("cpu") == [CPU]
    assert session_providers("cuda") == [CUDA, CPU]
    trt = session_providers("tensorrt", tensorrt=TensorrtOptions(cache_dir=None))
    assert [p if isinstance(p, str) else p[0] for p in trt] == [TENSORRT, CUDA, CPU]


def test_tensorrt_options(tmp_path):
    cache = tmp_path / "engines"
    options = TensorrtOptions(cache_dir=cache, fp16=True, input_name="image", max_batch=8).to_ort()
    assert cache.is_dir()
    assert options["trt_fp16_enable"] is True and options["trt_engine_cache_enable"] is True
    assert options["trt_engine_cache_path"] == str(cache) == options["trt_timing_cache_path"]
    assert options["trt_profile_min_shapes"] == "image:1x1x16x16"
    assert options["trt_profile_opt_shapes"] == "image:8x1x512x512"
    assert options["trt_profile_max_shapes"] == "image:8x1x1024x1024"
    assert TensorrtOptions(cache_dir=cache, fp16=False).to_ort()["trt_fp16_enable"] is False
    budget = TensorrtOptions(cache_dir=cache, max_batch=8, opt_batch=2).to_ort()  # 512^2 slices under a pixel budget
    assert budget["trt_profile_opt_shapes"] == "image:2x1x512x512"
    assert budget["trt_profile_max_shapes"] == "image:8x1x1024x1024"


@no_gpu
def test_this_machine_has_no_usable_cuda_and_says_why():
    # onnxruntime-gpu lists CUDA here, but there is no driver: the reason names it.
    reason = cuda_unavailable_reason()
    assert "libcuda.so.1" in reason or "no CUDA provider" in reason


@no_gpu
@pytest.mark.parametrize("name", ["cuda", "tensorrt", CUDA])
def test_explicit_gpu_provider_fails_start_up_with_the_reason(model_1c, name):
    kind = "tensorrt" if name == "tensorrt" else "cuda"
    with pytest.raises(ModelLoadError, match=rf"MSDN_PROVIDERS asks for {kind} but it cannot run here: .+"):
        ModelRuntime.load(model_1c, providers=[name])


@no_gpu
def test_auto_serves_on_the_cpu_and_logs_why(model_1c, caplog):
    assert check_available(parse_providers(["auto"])) == ProviderChoice("cpu", explicit=False)
    runtime = ModelRuntime.load(model_1c, providers=["auto"])
    assert runtime.provider == CPU and runtime.precision == "fp32" and not runtime.io_binding
    assert "CUDA cannot run here" in caplog.text


@no_gpu
def test_msdn_serve_with_cuda_exits_2_with_the_reason(model_1c, caplog):
    assert main(["serve", "--model", str(model_1c), "--providers", "cuda", "--no-warmup"]) == 2
    assert "MSDN_PROVIDERS asks for cuda but it cannot run here" in caplog.text


def test_fp16_on_the_cpu_is_refused(model_1c):
    with pytest.raises(ModelLoadError, match="MSDN_PRECISION=fp16 needs MSDN_PROVIDERS=cuda or tensorrt"):
        ModelRuntime.load(model_1c, providers=["cpu"], precision="fp16")


@pytest.mark.parametrize(
    ("kind", "requested", "exists", "loss", "expected", "fp16_file"),
    [
        ("cpu", "auto", True, 0.1, "fp32", False),
        ("cuda", "auto", False, None, "fp32", False),  # no variant
        ("cuda", "auto", True, None, "fp32", False),  # variant, loss not recorded
        ("cuda", "auto", True, 0.3, "fp16", True),  # within the 0.5 budget
        ("cuda", "auto", True, 0.5, "fp16", True),  # at the budget
        ("cuda", "auto", True, 0.51, "fp32", False),  # over it
        ("cuda", "fp16", True, 2.0, "fp16", True),  # asked for: served, the log says the loss
        ("cuda", "fp32", True, 0.1, "fp32", False),
        ("tensorrt", "auto", False, None, "fp16", False),  # fp16 engines from the fp32 graph
        ("tensorrt", "auto", True, 0.8, "fp32", False),  # recorded loss over budget
        ("tensorrt", "fp32", True, 0.1, "fp32", False),
    ],
)
def test_choose_precision(kind, requested, exists, loss, expected, fp16_file):
    choice = choose_precision(kind, requested, fp16_file_exists=exists, fp16_dice_loss=loss, max_dice_loss=0.5)
    assert (choice.precision, choice.use_fp16_file) == (expected, fp16_file), choice.reason


def test_choose_precision_refusals():
    with pytest.raises(ModelLoadError, match="needs the fp16 variant"):
        choose_precision("cuda", "fp16", fp16_file_exists=False, fp16_dice_loss=None, max_dice_loss=0.5)
    with pytest.raises(ModelLoadError, match="MSDN_PRECISION must be one of"):
        choose_precision("cuda", "bf16", fp16_file_exists=True, fp16_dice_loss=None, max_dice_loss=0.5)


def test_io_binding_gives_the_same_outputs(model_1c):
    """The IO-binding path (CPU-bound here; the same calls bind to CUDA on a GPU) equals session.run."""
    runtime = ModelRuntime.load(model_1c, providers=["cpu"], batch_size=3)
    x = np.random.default_rng(0).normal(0, 200, (7, 1, 32, 48)).astype(np.float32)
    plain = [runtime.run(x[i : i + 3])["probabilities"] for i in range(0, 7, 3)]
    runtime.io_binding = True
    bound = []
    runtime.run_batched(
        7, lambda a, b: x[a:b], lambda start, out: bound.append(out["probabilities"]), item_pixels=32 * 48
    )
    assert [b.shape for b in bound] == [(3, 2, 32, 48), (3, 2, 32, 48), (1, 2, 32, 48)]
    for p, b in zip(plain, bound, strict=True):
        np.testing.assert_array_equal(p, b)
    assert plain[0].sum() > 0 and not np.allclose(plain[0], plain[0].mean())


def test_model_route_and_metrics_report_what_is_in_use(model_1c):
    """/v1/model and /metrics carry the runtime's provider and precision, not the card's claims."""
    runtime = ModelRuntime.load(model_1c, providers=["cpu"])
    with TestClient(create_app(make_settings(model_1c), routers=[], runtime=runtime)) as client:
        info = client.get("/v1/model").json()
        assert (info["provider"], info["providers"], info["precision"], info["io_binding"]) == (
            CPU,
            [CPU],
            "fp32",
            False,
        )
        assert client.post("/segment", files=upload()).status_code == 200
        assert 'provider="CPUExecutionProvider"' in client.get("/metrics").text
        assert 'precision="fp32"' in client.get("/metrics").text
    # A runtime serving another precision than its card states (TensorRT fp16 engines from an fp32
    # file): both endpoints follow the runtime.
    fp16 = ModelRuntime(
        runtime.session,
        dataclasses.replace(runtime.card),
        path=runtime.path,
        sha256=runtime.sha256,
        requested_providers=[CPU],
        batch_size=8,
        precision="fp16",
    )
    assert fp16.card.precision == "fp32"
    with TestClient(create_app(make_settings(model_1c), routers=[], runtime=fp16)) as client:
        assert client.get("/v1/model").json()["precision"] == "fp16"
        assert 'precision="fp16"' in client.get("/metrics").text


# --- on a GPU machine (scripts/gpu_check.sh runs these; they skip where CUDA cannot run) ---------
gpu = pytest.mark.skipif(cuda_unavailable_reason() is not None, reason="needs a usable CUDA provider")


def _copy_model(src, dst_dir):
    import shutil

    dst = dst_dir / "m.onnx"
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".card.json"), dst.with_suffix(".card.json"))
    return dst


@gpu
def test_cuda_serves_with_io_binding_and_matches_the_cpu(model_1c):
    cpu = ModelRuntime.load(model_1c, providers=["cpu"])
    cuda = ModelRuntime.load(model_1c, providers=["cuda"])
    assert cuda.provider == CUDA and cuda.io_binding and cuda.precision == "fp32"
    x = np.random.default_rng(1).normal(0, 200, (8, 1, 64, 64)).astype(np.float32)
    np.testing.assert_allclose(cuda.run(x)["probabilities"], cpu.run(x)["probabilities"], atol=1e-4)
    assert cuda.describe()["io_binding"] is True


@gpu
def test_fp16_variant_is_chosen_on_cuda_only_within_its_recorded_budget(model_1c, tmp_path):
    from model_export.export.variants import _record_dice_loss, make_fp16

    model = _copy_model(model_1c, tmp_path)
    fp16 = make_fp16(model)
    runtime = ModelRuntime.load(model, providers=["cuda"])
    assert runtime.precision == "fp32" and runtime.path == model  # loss not recorded: fp32
    _record_dice_loss(fp16, 0.2)
    runtime = ModelRuntime.load(model, providers=["cuda"], fp16_max_dice_loss=0.5)
    assert runtime.precision == "fp16" and runtime.path == fp16 and runtime.provider == CUDA
    x = np.random.default_rng(2).normal(0, 200, (4, 1, 32, 32)).astype(np.float32)
    cpu = ModelRuntime.load(model, providers=["cpu"]).run(x)["probabilities"]
    assert (runtime.run(x)["probabilities"].argmax(1) == cpu.argmax(1)).mean() > 0.99
    assert ModelRuntime.load(model, providers=["cuda"], fp16_max_dice_loss=0.1).precision == "fp32"


@pytest.mark.skipif(tensorrt_unavailable_reason() is not None, reason="needs a usable TensorRT provider")
def test_tensorrt_builds_cached_fp16_engines(model_1c, tmp_path):
    cache = tmp_path / "trt"
    runtime = ModelRuntime.load(model_1c, providers=["tensorrt"], tensorrt_cache_dir=cache, batch_size=4)
    assert runtime.provider == TENSORRT and runtime.precision == "fp16"
    x = np.random.default_rng(3).normal(0, 200, (4, 1, 64, 64)).astype(np.float32)
    cpu = ModelRuntime.load(model_1c, providers=["cpu"]).run(x)["probabilities"]
    assert (runtime.run(x)["probabilities"].argmax(1) == cpu.argmax(1)).mean() > 0.99
    assert any(cache.iterdir())  # engines (and the timing cache) are written for the next start
