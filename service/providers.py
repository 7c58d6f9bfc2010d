"""Execution providers: what ``MSDN_PROVIDERS`` asks for, what can really load here, and in which precision.

``MSDN_PROVIDERS`` takes one of

* ``auto``: CUDA when its libraries and a driver really load, else the CPU (TensorRT is never picked
  by ``auto``: its engines take minutes to build at the first start);
* ``tensorrt``: ONNX Runtime's TensorRT provider (CUDA, then CPU, for the nodes TensorRT does not
  take), fp16 unless ``MSDN_PRECISION=fp32``, engines cached in ``MSDN_TENSORRT_CACHE_DIR``;
* ``cuda``: the CUDA provider (the CPU provider stays behind it for the few nodes CUDA has no kernel
  for, as ONNX Runtime always does);
* ``cpu``.

ONNX Runtime's own names (``CUDAExecutionProvider``, ...) are accepted too, alone or as a list with
the CPU behind. An explicitly named GPU provider that cannot load fails start-up with the reason
(``ModelLoadError``); it never quietly becomes the CPU.

Precision: ``fp16`` on CUDA means loading the fp16 variant ``<model>.fp16.onnx`` written by
``msdn export --fp16``; with ``MSDN_PRECISION=auto`` it is chosen only when that variant's card
records a Dice loss against fp32 (``variant_dice_loss``) within ``MSDN_FP16_MAX_DICE_LOSS``. On
TensorRT fp16 is the engine's build flag on the fp32 graph, on unless the same record says the loss
is over budget (or ``MSDN_PRECISION=fp32``). The CPU serves the int8 static-QDQ variant
``<model>.int8.onnx`` (``msdn export --int8``, about twice as fast as fp32 on CPUs with VNNI) when
``MSDN_PRECISION=auto`` and its card records a Dice loss against fp32 within
``MSDN_INT8_MAX_DICE_LOSS`` and the CPU has VNNI (``avx512_vnni`` / ``avx_vnni``: without it ONNX
Runtime's int8 kernels are slower than fp32, measured 0.8x on an AVX2-only EPYC; ``MSDN_INT8_NEEDS_VNNI``)
and, for a model with detection outputs, its card's proposal threshold was calibrated on the int8
file's own scores (``msdn calibrate`` on the int8 file: quantisation moves detector scores, so a
threshold from fp32 does not carry over), or always with ``MSDN_PRECISION=int8``; else fp32.

The CUDA libraries come from the ``nvidia-*`` wheels of ``onnxruntime-gpu[cuda,cudnn]`` (CUDA 13,
cuDNN 9), loaded with ``onnxruntime.preload_dlls()``; TensorRT's from the ``tensorrt-cu13-libs`` wheel
when installed. Torch-free.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.util
import logging
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from service.errors import ModelLoadError

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

#: MSDN_PROVIDERS short names -> the provider doing the work.
KINDS = {"cpu": CPU, "cuda": CUDA, "tensorrt": TENSORRT}
_BY_ORT_NAME = {v.lower(): k for k, v in KINDS.items()}
PRECISIONS = ("auto", "fp32", "fp16", "int8")


@dataclass(frozen=True)
class ProviderChoice:
    """The provider asked for, normalised.

    Attributes:
        kind: ``cpu``, ``cuda`` or ``tensorrt``.
        explicit: named by the user (``False`` for ``auto``): such a GPU provider must load.
    """

    kind: str
    explicit: bool

    @property
    def provider(self) -> str:
        """The ONNX Runtime name of the provider doing the work."""
        return KINDS[self.kind]

    @property
    def on_gpu(self) -> bool:
        return self.kind != "cpu"


def _capi_dir() -> Path:
    import onnxruntime as ort

    return Path(ort.__file__).parent / "capi"


@functools.lru_cache(maxsize=1)
def _preload_cuda() -> Optional[str]:
    """``onnxruntime.preload_dlls()`` once (CUDA, cuDNN from the nvidia wheels); the error text or None."""
    import onnxruntime as ort

    if not hasattr(ort, "preload_dlls"):
        return None
    try:
        ort.preload_dlls(cuda=True, cudnn=True, msvc=False)
    except Exception as exc:  # noqa: BLE001 - it raises what ctypes raises; the provider check follows
        return str(exc)
    return None


@functools.lru_cache(maxsize=1)
def _preload_tensorrt() -> None:
    """Load the ``tensorrt_libs`` wheel's libraries globally when installed (ORT finds them then)."""
    spec = importlib.util.find_spec("tensorrt_libs")
    if spec is None or not spec.submodule_search_locations:
        return
    for folder in spec.submodule_search_locations:
        for name in ("libnvinfer.so", "libnvinfer_plugin.so", "libnvonnxparser.so"):
            for lib in sorted(Path(folder).glob(name + ".*")):
                try:
                    ctypes.CDLL(str(lib), mode=ctypes.RTLD_GLOBAL)
                except OSError as exc:
                    logger.debug("cannot preload %s: %s", lib, exc)
                break


def _load_provider_library(name: str) -> Optional[str]:
    """dlopen ONNX Runtime's ``libonnxruntime_providers_<name>.so``; the loader's error or None."""
    capi = _capi_dir()
    try:
        ctypes.CDLL(str(capi / "libonnxruntime_providers_shared.so"), mode=ctypes.RTLD_GLOBAL)
        ctypes.CDLL(str(capi / f"libonnxruntime_providers_{name}.so"))
    except OSError as exc:
        return str(exc)
    return None


@functools.lru_cache(maxsize=1)
def cuda_unavailable_reason() -> Optional[str]:
    """Why the CUDA provider cannot run here, or None when it can.

    ``onnxruntime-gpu`` always lists ``CUDAExecutionProvider``; what matters is the driver
    (``libcuda.so.1``) and the provider library with the CUDA / cuDNN libraries it links.
    """
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return (
            f"this ONNX Runtime build ({ort.__version__}, providers {ort.get_available_providers()}) has no "
            "CUDA provider: install onnxruntime-gpu[cuda,cudnn] (the GPU image), not onnxruntime"
        )
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return (
            f"no NVIDIA driver ({exc}); in Docker the GPU must be given to the container "
            "(NVIDIA Container Toolkit, docker-compose.gpu.yml)"
        )
    preload_error = _preload_cuda()
    error = _load_provider_library("cuda")
    if error is not None:
        hint = f"; onnxruntime.preload_dlls() said: {preload_error}" if preload_error else ""
        return (
            f"the CUDA provider library cannot load ({error}){hint}: the CUDA 13 / cuDNN 9 runtime is missing "
            "(pip install onnxruntime-gpu[cuda,cudnn])"
        )
    return None


@functools.lru_cache(maxsize=1)
def tensorrt_unavailable_reason() -> Optional[str]:
    """Why the TensorRT provider cannot run here, or None when it can (it needs CUDA as well)."""
    import onnxruntime as ort

    if TENSORRT not in ort.get_available_providers():
        return f"this ONNX Runtime build ({ort.__version__}) has no TensorRT provider"
    reason = cuda_unavailable_reason()
    if reason is not None:
        return f"TensorRT needs CUDA, and {reason}"
    _preload_tensorrt()
    error = _load_provider_library("tensorrt")
    if error is not None:
        return (
            f"the TensorRT provider library cannot load ({error}): TensorRT's libnvinfer matching this ONNX "
            "Runtime is missing (pip install tensorrt-cu13-libs, see docs/deploy.md)"
        )
    return None


def cuda_usable() -> bool:
    """Whether ONNX Runtime's CUDA provider can really run here."""
    return cuda_unavailable_reason() is None


#: CPU flags (``/proc/cpuinfo``) of the int8 dot-product instructions ONNX Runtime's int8 kernels use.
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@functools.lru_cache(maxsize=1)
def cpu_has_vnni() -> bool:
    """Whether this CPU has VNNI (or AMX) int8 dot products (Linux ``/proc/cpuinfo`` flags)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return any(flag in line.split() for flag in VNNI_FLAGS)
    except OSError:
        pass
    return False


def parse_providers(requested: Sequence[str]) -> ProviderChoice:
    """Normalise ``MSDN_PROVIDERS`` (module docstring) without checking what loads (``auto`` -> cuda,
    not explicit).

    Raises:
        ModelLoadError: an unknown name, or several GPU providers at once.
    """
    names = [str(p).strip() for p in requested if str(p).strip()]
    if not names or [n.lower() for n in names] == ["auto"]:
        return ProviderChoice("cuda", explicit=False)  # check_available decides whether CUDA runs here
    kinds = []
    for name in names:
        kind = name.lower() if name.lower() in KINDS else _BY_ORT_NAME.get(name.lower())
        if kind is None:
            raise ModelLoadError(
                f"unknown execution provider {name!r} in MSDN_PROVIDERS: use auto, tensorrt, cuda or cpu "
                f"(or ONNX Runtime's names {sorted(KINDS.values())})"
            )
        kinds.append(kind)
    gpu = [k for k in kinds if k != "cpu"]
    if len(gpu) > 1 and gpu != ["tensorrt", "cuda"]:
        raise ModelLoadError(f"MSDN_PROVIDERS {names}: name one GPU provider (tensorrt or cuda), not {gpu}")
    return ProviderChoice(gpu[0] if gpu else "cpu", explicit=True)


def check_available(choice: ProviderChoice) -> ProviderChoice:
    """``choice`` when it can run here; ``auto``'s CUDA degrades to the CPU, an explicit GPU provider raises.

    Raises:
        ModelLoadError: an explicitly requested GPU provider cannot load (the message says why).
    """
    if choice.kind == "cpu":
        return choice
    reason = tensorrt_unavailable_reason() if choice.kind == "tensorrt" else cuda_unavailable_reason()
    if reason is None:
        return choice
    if choice.explicit:
        raise ModelLoadError(f"MSDN_PROVIDERS asks for {choice.kind} but it cannot run here: {reason}")
    logger.warning("CUDA cannot run here (%s); serving on the CPU", reason)
    return ProviderChoice("cpu", explicit=False)


@dataclass(frozen=True)
class PrecisionChoice:
    """The precision to serve in and why.

    Attributes:
        precision: ``fp32`` or ``fp16``.
        reason: one line for the log.
        use_fp16_file: load the fp16 variant file (CUDA) rather than build fp16 engines (TensorRT).
        use_int8_file: load the int8 variant file (CPU).
    """

    precision: str
    reason: str
    use_fp16_file: bool = False
    use_int8_file: bool = False


def choose_precision(
    kind: str,
    requested: str,
    *,
    fp16_file_exists: bool,
    fp16_dice_loss: Optional[float],
    max_dice_loss: float,
    int8_file_exists: bool = False,
    int8_dice_loss: Optional[float] = None,
    int8_max_dice_loss: float = 0.5,
    int8_fast: bool = True,
    int8_detector_unvalidated: bool = False,
    int8_sensitivity_loss: Optional[float] = None,
    int8_max_sensitivity_loss: float = 0.05,
) -> PrecisionChoice:
    """The precision for provider ``kind`` (module docstring).

    Args:
        kind: ``cpu``, ``cuda`` or ``tensorrt``.
        requested: ``MSDN_PRECISION``: ``auto``, ``fp32`` or ``fp16``.
        fp16_file_exists: the fp16 variant ``<model>.fp16.onnx`` is there.
        fp16_dice_loss: Dice points it loses against fp32, as its card records (None: not measured).
        max_dice_loss: ``MSDN_FP16_MAX_DICE_LOSS``.
        int8_file_exists, int8_dice_loss, int8_max_dice_loss: the same for the int8 variant
            ``<model>.int8.onnx`` on the CPU (``MSDN_INT8_MAX_DICE_LOSS``).
        int8_fast: int8 is faster than fp32 on this CPU (VNNI); ``auto`` serves int8 only then.
        int8_detector_unvalidated: the int8 variant has detection outputs but its proposal threshold
            was not calibrated on its own (int8) scores; ``auto`` then serves fp32: the recorded Dice
            loss is measured on segmentation patches only, and quantisation moves detector scores
            (the committed default model's int8 file calibrates to 0.0580 on its own scores, fp32 to 0.0555).
        int8_sensitivity_loss: detecting models: the fp32 card's calibrated sensitivity minus the int8
            card's own (None: not both recorded); ``auto`` serves int8 only when it is at most
            ``int8_max_sensitivity_loss`` (``MSDN_INT8_MAX_SENSITIVITY_LOSS``).

    Raises:
        ModelLoadError: ``fp16`` asked for where it cannot be served.
    """
    if requested not in PRECISIONS:
        raise ModelLoadError(f"MSDN_PRECISION must be one of {PRECISIONS}, got {requested!r}")
    recorded = "not recorded" if fp16_dice_loss is None else f"{fp16_dice_loss:.2f} Dice points"
    within = fp16_dice_loss is not None and fp16_dice_loss <= max_dice_loss
    if kind == "cpu":
        if requested == "fp16":
            raise ModelLoadError(
                "MSDN_PRECISION=fp16 needs MSDN_PROVIDERS=cuda or tensorrt; the CPU serves fp32 or int8"
            )
        return _cpu_precision(
            requested,
            int8_file_exists,
            int8_dice_loss,
            int8_max_dice_loss,
            int8_fast,
            int8_detector_unvalidated,
            int8_sensitivity_loss,
            int8_max_sensitivity_loss,
        )
    if requested == "int8":
        raise ModelLoadError("MSDN_PRECISION=int8 is for the CPU (MSDN_PROVIDERS=cpu); GPUs serve fp16 or fp32")
    if requested == "fp32":
        return PrecisionChoice("fp32", "MSDN_PRECISION=fp32")
    if kind == "tensorrt":
        if requested == "auto" and fp16_dice_loss is not None and not within:
            return PrecisionChoice("fp32", f"fp16 loses {recorded}, over the {max_dice_loss:g} allowed")
        return PrecisionChoice("fp16", f"TensorRT fp16 engines ({requested}; fp16 loss {recorded})")
    if not fp16_file_exists:
        if requested == "fp16":
            raise ModelLoadError(
                "MSDN_PRECISION=fp16 on CUDA needs the fp16 variant <model>.fp16.onnx next to the model "
                "(msdn export --fp16)"
            )
        return PrecisionChoice("fp32", "no fp16 variant next to the model")
    if requested == "fp16":
        return PrecisionChoice("fp16", f"MSDN_PRECISION=fp16 (fp16 loss {recorded})", use_fp16_file=True)
    if within:
        return PrecisionChoice(
            "fp16", f"fp16 variant loses {recorded}, within the {max_dice_loss:g} allowed", use_fp16_file=True
        )
    return PrecisionChoice("fp32", f"fp16 variant loss {recorded} (budget {max_dice_loss:g}): serving fp32")


def _cpu_precision(
    requested: str,
    exists: bool,
    loss: Optional[float],
    budget: float,
    fast: bool = True,
    detector_unvalidated: bool = False,
    sensitivity_loss: Optional[float] = None,
    max_sensitivity_loss: float = 0.05,
) -> PrecisionChoice:
    recorded = "not recorded" if loss is None else f"{loss:.2f} Dice points"
    if requested == "fp32":
        return PrecisionChoice("fp32", "MSDN_PRECISION=fp32")
    if not exists:
        if requested == "int8":
            raise ModelLoadError(
                "MSDN_PRECISION=int8 needs the int8 variant <model>.int8.onnx next to the model (msdn export --int8)"
            )
        return PrecisionChoice("fp32", "no int8 variant next to the model")
    if requested == "int8":
        return PrecisionChoice("int8", f"MSDN_PRECISION=int8 (int8 loss {recorded})", use_int8_file=True)
    if loss is not None and loss <= budget and detector_unvalidated:
        return PrecisionChoice(
            "fp32",
            f"int8 variant loses {recorded} on segmentation patches, within the {budget:g} allowed, but its "
            "detector's proposal threshold was calibrated on fp32 scores (msdn calibrate the int8 file; "
            "MSDN_PRECISION=int8 serves it anyway)",
        )
    if loss is not None and loss <= budget and sensitivity_loss is not None and sensitivity_loss > max_sensitivity_loss:
        return PrecisionChoice(
            "fp32",
            f"int8 variant loses {recorded} on segmentation patches, within the {budget:g} allowed, but its detector "
            f"finds {sensitivity_loss:.3f} fewer of the calibration nodules at its own operating point (over "
            f"the {max_sensitivity_loss:g} of MSDN_INT8_MAX_SENSITIVITY_LOSS; MSDN_PRECISION=int8 serves it anyway)",
        )
    if loss is not None and loss <= budget and not fast:
        return PrecisionChoice(
            "fp32",
            f"int8 variant loses {recorded}, within the {budget:g} allowed, but this CPU has no VNNI, where int8 "
            "is slower than fp32 (MSDN_PRECISION=int8 serves it anyway)",
        )
    if loss is not None and loss <= budget:
        detector = (
            ""
            if sensitivity_loss is None
            else f"; its detector finds {sensitivity_loss:.3f} fewer of the calibration nodules at its own operating "
            f"point (within {max_sensitivity_loss:g})"
        )
        return PrecisionChoice(
            "int8", f"int8 variant loses {recorded}, within the {budget:g} allowed{detector}", use_int8_file=True
        )
    return PrecisionChoice("fp32", f"int8 variant loss {recorded} (budget {budget:g}): serving fp32")


@dataclass
class TensorrtOptions:
    """The TensorRT provider's options (engine cache, fp16, shape profile)."""

    cache_dir: Optional[Path] = None
    fp16: bool = True
    input_name: str = "image"
    channels: int = 1
    max_batch: int = 8
    #: the batch the profile is optimised for (default ``max_batch``): what 512 x 512 slices get
    opt_batch: Optional[int] = None
    max_side: int = 1024
    opt_side: int = 512
    min_side: int = 16
    extra: dict[str, Any] = field(default_factory=dict)

    def to_ort(self) -> dict[str, Any]:
        """The option dict for ``InferenceSession(providers=[(TENSORRT, options), ...])``."""
        cache = Path(self.cache_dir) if self.cache_dir else Path(tempfile.gettempdir()) / "msdn-tensorrt"
        cache.mkdir(parents=True, exist_ok=True)
        if not os.access(cache, os.W_OK):
            raise ModelLoadError(f"TensorRT engine cache {cache} is not writable (MSDN_TENSORRT_CACHE_DIR)")

        def shape(batch: int, side: int) -> str:
            return f"{self.input_name}:{batch}x{self.channels}x{side}x{side}"

        return {
            "trt_fp16_enable": bool(self.fp16),
            "trt_engine_cache_enable": True,
            "trt_engine_cache_path": str(cache),
            "trt_timing_cache_enable": True,
            "trt_timing_cache_path": str(cache),
            "trt_profile_min_shapes": shape(1, self.min_side),
            "trt_profile_opt_shapes": shape(self.opt_batch or self.max_batch, self.opt_side),
            "trt_profile_max_shapes": shape(self.max_batch, self.max_side),
            **self.extra,
        }


def session_providers(kind: str, *, tensorrt: Optional[TensorrtOptions] = None) -> list[Any]:
    """The ``providers=`` list for ``onnxruntime.InferenceSession`` serving on ``kind``."""
    if kind == "cpu":
        return [CPU]
    if kind == "cuda":
        return [CUDA, CPU]
    return [(TENSORRT, (tensorrt or TensorrtOptions()).to_ort()), CUDA, CPU]


__all__ = [
    "CPU",
    "CUDA",
    "KINDS",
    "PRECISIONS",
    "TENSORRT",
    "PrecisionChoice",
    "ProviderChoice",
    "TensorrtOptions",
    "check_available",
    "choose_precision",
    "cpu_has_vnni",
    "cuda_unavailable_reason",
    "cuda_usable",
    "parse_providers",
    "session_providers",
    "tensorrt_unavailable_reason",
]
