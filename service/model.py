"""The served model: an ONNX Runtime session with its model card.

``ModelRuntime.load(path)`` reads the card (from the ONNX ``metadata_props``, else from the sidecar
``<model>.card.json``), checks the graph checksum recorded at export and the file's SHA-256 against the
sidecar's ``onnx_sha256`` when the sidecar carries one, picks execution providers (CUDA only when its
libraries really load), checks the graph's inputs and outputs against the card, and can make a warm-up
run. ``run_batched`` runs a stack of inputs in batches of ``batch_size``. Torch-free.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from msdn_core import onnx_model
from msdn_core.card import ModelCard
from msdn_core.digest import file_sha256
from msdn_core.onnx_model import GRAPH_SHA256_KEY, ModelFileError, graph_sha256, load_onnx
from service.errors import ModelLoadError

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


def read_card(
    model_path: str | os.PathLike, metadata: Optional[dict[str, str]] = None
) -> tuple[ModelCard, Optional[str]]:
    """``msdn_core.onnx_model.read_card`` with its failures as ``ModelLoadError``."""
    try:
        return onnx_model.read_card(model_path, metadata)
    except ModelFileError as exc:
        raise ModelLoadError(str(exc)) from exc


def cuda_usable() -> bool:
    """Whether ONNX Runtime's CUDA provider can really load here.

    ``onnxruntime-gpu`` always lists ``CUDAExecutionProvider``; asking for it without a driver or
    without the CUDA/cuDNN libraries only fills the log with load errors. So: the driver library must
    load, and the provider library (which links CUDA, cuBLAS, cuDNN) must load, after
    ``onnxruntime.preload_dlls()`` where the libraries come from the ``nvidia-*`` wheels.
    """
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return False
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    provider_lib = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    for attempt in range(2):
        try:
            ctypes.CDLL(str(provider_lib))
            return True
        except OSError as exc:
            if attempt == 0 and hasattr(ort, "preload_dlls"):
                try:
                    ort.preload_dlls()
                except Exception:  # noqa: BLE001 - best effort only
                    return False
            else:
                logger.info("CUDA driver found but the CUDA provider cannot load (%s); using CPU", exc)
    return False


def resolve_providers(requested: Sequence[str]) -> list[str]:
    """Execution providers to ask ONNX Runtime for.

    ``["auto"]`` means CUDA when ``cuda_usable()``, then CPU. Explicit names are kept in order (CPU
    is appended as the fallback); unknown names raise ``ModelLoadError``.
    """
    import onnxruntime as ort

    names = [p for p in requested if p]
    if not names or names == ["auto"]:
        return [CUDA, CPU] if cuda_usable() else [CPU]
    available = ort.get_available_providers()
    unknown = [p for p in names if p not in available]
    if unknown:
        raise ModelLoadError(f"execution providers {unknown} are not available; this build offers {available}")
    if CUDA in names and not cuda_usable():
        logger.warning("CUDAExecutionProvider requested but CUDA cannot load here; using CPU")
        names = [p for p in names if p != CUDA]
    return names + ([CPU] if CPU not in names else [])


@dataclass
class RunStats:
    """What one ``run_batched`` call cost."""

    calls: int = 0
    items: int = 0
    seconds: float = 0.0

    def add(self, other: "RunStats") -> None:
        """Accumulate ``other`` into this one."""
        self.calls += other.calls
        self.items += other.items
        self.seconds += other.seconds


class ModelRuntime:
    """An ONNX Runtime session plus the card that says how to feed it.

    Build with ``ModelRuntime.load``. Thread-safe: ONNX Runtime sessions accept concurrent ``run``
    calls.
    """

    def __init__(
        self,
        session: Any,
        card: ModelCard,
        *,
        path: Path,
        sha256: str,
        requested_providers: list[str],
        batch_size: int,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        self.session = session
        self.card = card
        self.path = path
        self.sha256 = sha256
        self.requested_providers = requested_providers
        self.batch_size = batch_size
        self.warm = False
        outputs = card.outputs or {}
        self.input_name = card.input_name
        self.segmentation_output = outputs.get("segmentation", "probabilities")
        detection = outputs.get("detection") or None
        self.detection_outputs: Optional[tuple[str, str]] = (
            (detection["scores"], detection["boxes"]) if detection else None
        )
        self._check_graph()

    @classmethod
    def load(
        cls,
        path: str | os.PathLike,
        *,
        providers: Sequence[str] = ("auto",),
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        batch_size: int = 8,
        verify_sha256: bool = True,
        cpu_mem_arena: bool = True,
    ) -> "ModelRuntime":
        """Open ``path`` with ONNX Runtime.

        Raises:
            ModelLoadError: missing file, no card, SHA-256 mismatch, graph not matching its card,
                unusable providers.
        """
        import onnxruntime as ort

        model_path = Path(path)
        if not model_path.is_file():
            raise ModelLoadError(f"model file {model_path} does not exist (set MSDN_MODEL_PATH or --model)")
        sha = file_sha256(model_path)
        try:
            proto = load_onnx(model_path)  # clear errors for empty, truncated or non-ONNX files
        except ModelFileError as exc:
            raise ModelLoadError(str(exc)) from exc
        metadata = {p.key: p.value for p in proto.metadata_props}
        if GRAPH_SHA256_KEY in metadata and metadata[GRAPH_SHA256_KEY] != graph_sha256(proto):
            raise ModelLoadError(f"{model_path} is corrupted: its graph does not match the checksum recorded at export")
        del proto
        chosen = resolve_providers(list(providers))
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(intra_op_threads)
        options.inter_op_num_threads = int(inter_op_threads)
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = bool(cpu_mem_arena)
        try:
            session = ort.InferenceSession(str(model_path), sess_options=options, providers=chosen)
        except Exception as exc:  # ORT raises its own exception types
            raise ModelLoadError(f"ONNX Runtime cannot load {model_path}: {exc}") from exc
        card, expected = read_card(model_path, metadata)
        if expected is not None and expected.lower() != sha:
            message = f"{model_path} has SHA-256 {sha} but its card expects {expected}"
            if verify_sha256:
                raise ModelLoadError(message)
            logger.warning("%s (MSDN_VERIFY_SHA256 is off, serving anyway)", message)
        runtime = cls(session, card, path=model_path, sha256=sha, requested_providers=chosen, batch_size=batch_size)
        logger.info(
            "model %s %s loaded from %s (sha256 %s..., provider %s)",
            card.name,
            card.version,
            model_path,
            sha[:12],
            runtime.provider,
        )
        return runtime

    @classmethod
    def from_settings(cls, settings: "Settings") -> "ModelRuntime":
        """``load`` with the ``MSDN_*`` settings (model path, providers, threads, batch, arena, SHA check)."""
        return cls.load(
            settings.model_path,
            providers=settings.providers,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            batch_size=settings.batch_size,
            verify_sha256=settings.verify_sha256,
            cpu_mem_arena=settings.cpu_mem_arena,
        )

    def _check_graph(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = {o.name for o in self.session.get_outputs()}
        if self.input_name not in inputs:
            raise ModelLoadError(f"graph has no input {self.input_name!r} (inputs: {sorted(inputs)})")
        shape = inputs[self.input_name].shape
        if len(shape) != 4:
            raise ModelLoadError(f"input {self.input_name!r} must be (B, C, H, W), graph says {shape}")
        if self.card.input.channels != 1:
            raise ModelLoadError(f"the service reads single-channel images; the model wants {self.card.input.channels}")
        wanted = [self.segmentation_output, *(self.detection_outputs or ())]
        missing = [name for name in wanted if name not in outputs]
        if missing:
            raise ModelLoadError(f"graph lacks outputs {missing} named by its card (outputs: {sorted(outputs)})")

    @property
    def providers(self) -> list[str]:
        """Providers the session really uses, best first."""
        return list(self.session.get_providers())

    @property
    def provider(self) -> str:
        """The provider doing the work."""
        return self.providers[0]

    @property
    def has_detection(self) -> bool:
        """Whether the graph also outputs detector proposals."""
        return self.detection_outputs is not None

    @property
    def num_classes(self) -> int:
        return self.card.num_classes

    def run(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """One ONNX Runtime call on (B, C, H, W) float32; returns the named outputs."""
        names = [self.segmentation_output, *(self.detection_outputs or ())]
        values = self.session.run(names, {self.input_name: np.ascontiguousarray(batch, dtype=np.float32)})
        return dict(zip(names, values, strict=True))

    def run_batched(
        self,
        count: int,
        make_batch: Callable[[int, int], np.ndarray],
        consume: Callable[[int, dict[str, np.ndarray]], None],
        *,
        check: Optional[Callable[[], None]] = None,
    ) -> RunStats:
        """Run ``count`` items in batches of ``batch_size``.

        Args:
            count: number of items.
            make_batch: ``(start, stop) -> (stop - start, C, H, W)`` float32 input.
            consume: ``(start, outputs)`` called with each batch's outputs.
            check: called before each batch (raises to stop, e.g. on a deadline).
        """
        stats = RunStats()
        for start in range(0, count, self.batch_size):
            if check is not None:
                check()
            stop = min(count, start + self.batch_size)
            batch = make_batch(start, stop)
            t0 = time.perf_counter()
            outputs = self.run(batch)
            stats.seconds += time.perf_counter() - t0
            stats.calls += 1
            stats.items += stop - start
            consume(start, outputs)
        return stats

    def warmup(self) -> float:
        """One run on a zero patch of the card's patch size; returns its seconds."""
        h, w = self.card.input.patch_size
        t0 = time.perf_counter()
        self.run(np.zeros((1, self.card.input.channels, int(h), int(w)), np.float32))
        seconds = time.perf_counter() - t0
        self.warm = True
        logger.info("warm-up run took %.3f s", seconds)
        return seconds

    def describe(self) -> dict[str, Any]:
        """What ``GET /v1/model`` answers."""
        card = self.card
        return {
            "name": card.name,
            "version": card.version,
            "method": card.method,
            "classes": [{"value": c.value, "name": c.name} for c in card.classes],
            "input": {
                "name": self.input_name,
                "channels": card.input.channels,
                "mean": card.input.mean,
                "std": card.input.std,
                "clip": card.input.clip,
                "patch_size": list(card.input.patch_size),
                "size_multiple": card.input.size_multiple,
            },
            "outputs": card.outputs,
            "detection": self.has_detection,
            "precision": card.precision,
            "opset": card.opset,
            "validation_dice": card.validation_dice,
            "providers": self.providers,
            "sha256": self.sha256,
            "file": self.path.name,
            "card": card.to_dict(),
        }
