"""The served model: an ONNX Runtime session with its model card.

``ModelRuntime.load(path)`` reads the card (from the ONNX ``metadata_props``, else from the sidecar
``<model>.card.json``), checks the graph checksum recorded at export and the file's SHA-256 against the
sidecar's ``onnx_sha256`` when the sidecar carries one, picks the execution provider and precision
(``service.providers``: an explicitly requested GPU provider must really load; fp16 on CUDA is the
``<model>.fp16.onnx`` variant when its card records a Dice loss within budget), checks the graph's
inputs and outputs against the card, and can make a warm-up run. ``run_batched`` runs a stack of
inputs in batches of ``batch_size``, through IO binding on a GPU. Torch-free.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence

import numpy as np

from msdn_core import onnx_model
from msdn_core.card import ModelCard
from msdn_core.digest import file_sha256
from msdn_core.onnx_model import GRAPH_SHA256_KEY, ModelFileError, graph_sha256, load_onnx, variant_path
from service.errors import ModelLoadError
from service.providers import (
    CPU,
    CUDA,
    TENSORRT,
    TensorrtOptions,
    check_available,
    choose_precision,
    cpu_has_vnni,
    cuda_usable,
    parse_providers,
    session_providers,
)
from service.settings import BATCH_MAX_PIXELS

if TYPE_CHECKING:
    from service.settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["CPU", "CUDA", "TENSORRT", "ModelRuntime", "RunStats", "batch_for", "cuda_usable", "read_card"]


def read_card(
    model_path: str | os.PathLike, metadata: Optional[dict[str, str]] = None
) -> tuple[ModelCard, Optional[str]]:
    """``msdn_core.onnx_model.read_card`` with its failures as ``ModelLoadError``."""
    try:
        return onnx_model.read_card(model_path, metadata)
    except ModelFileError as exc:
        raise ModelLoadError(str(exc)) from exc


@functools.lru_cache(maxsize=1)
def _shrink_options() -> Any:
    """RunOptions asking ONNX Runtime to shrink the CPU memory arena after the run."""
    import onnxruntime as ort

    options = ort.RunOptions()
    options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    return options


def batch_for(item_pixels: int, *, batch_size: int, max_pixels: int) -> int:
    """Items per ONNX Runtime call: ``batch_size``, cut so that ``items x item_pixels <= max_pixels``
    (0: no cut), and at least 1. The one rule every batch follows (``ModelRuntime.batch_for``)."""
    if item_pixels < 1:
        raise ValueError(f"item_pixels must be >= 1, got {item_pixels!r}")
    if not max_pixels:
        return batch_size
    return max(1, min(batch_size, max_pixels // item_pixels))


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
    calls (each call binds its own inputs and outputs).

    Attributes:
        precision: the precision really served (``fp32``, ``fp16``: the fp16 variant file on CUDA or
            fp16 engines on TensorRT; ``int8`` for an int8 file).
        io_binding: inputs and outputs go through ONNX Runtime IO binding (on by default on a GPU).
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
        batch_max_pixels: int = 0,
        precision: Optional[str] = None,
        io_binding: bool = False,
        precision_reason: str = "",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
        if batch_max_pixels < 0:
            raise ValueError(f"batch_max_pixels must be >= 0 (0: no limit), got {batch_max_pixels!r}")
        self.session = session
        self.card = card
        self.path = path
        self.sha256 = sha256
        self.requested_providers = requested_providers
        self.batch_size = batch_size
        #: most input pixels (items x height x width) in one ONNX Runtime call; 0: no limit
        self.batch_max_pixels = batch_max_pixels
        self.precision = precision or card.precision
        self.precision_reason = precision_reason
        #: make the next batch in a helper thread while ONNX Runtime runs the current one
        self.overlap = True
        #: return the CPU arena's growth to the system after the last batch of each run_batched
        self.shrink_arena = True
        self.io_binding = bool(io_binding)
        self.warm = False
        self._next = threading.local()  # per calling thread: items of the batch its next check precedes
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
        precision: str = "auto",
        fp16_max_dice_loss: float = 0.5,
        int8_max_dice_loss: float = 0.5,
        int8_max_sensitivity_loss: float = 0.05,
        int8_needs_vnni: bool = True,
        tensorrt_cache_dir: Optional[str | os.PathLike] = None,
        io_binding: bool = True,
        intra_op_threads: int = 0,
        inter_op_threads: int = 0,
        intra_op_spinning: bool = False,
        batch_size: int = 8,
        batch_max_pixels: int = BATCH_MAX_PIXELS,
        verify_sha256: bool = True,
        cpu_mem_arena: bool = True,
    ) -> "ModelRuntime":
        """Open ``path`` with ONNX Runtime.

        Args:
            path: the fp32 (or only) export; its fp16 variant is ``<stem>.fp16.onnx`` next to it.
            providers: ``MSDN_PROVIDERS`` (``service.providers``).
            precision: ``auto``, ``fp32`` or ``fp16``.
            fp16_max_dice_loss: largest recorded fp16 Dice loss (points) for ``auto`` to serve fp16.
            int8_max_dice_loss: the same for the int8 variant ``<stem>.int8.onnx`` on the CPU.
            int8_max_sensitivity_loss: detecting models: largest drop of the calibrated sensitivity
                (int8 card's own calibration against the fp32 card's) for ``auto`` to serve int8.
            int8_needs_vnni: ``auto`` serves int8 only on a CPU with VNNI (where it is faster).
            tensorrt_cache_dir: TensorRT engine cache (default: a folder in the temp dir).
            io_binding: bind inputs/outputs through ONNX Runtime on a GPU provider.
            intra_op_threads, inter_op_threads: ONNX Runtime threads (0: its default).
            intra_op_spinning: ONNX Runtime's ``session.intra_op.allow_spinning`` (ONNX Runtime's
                default is on; ``MSDN_INTRA_OP_SPINNING`` is off by default, see docs/performance.md).
            batch_size: slices or patches per ``run``.
            batch_max_pixels: most input pixels per ``run`` (``batch_for``); 0: no limit.
            verify_sha256: refuse a file whose SHA-256 differs from its sidecar.
            cpu_mem_arena: ONNX Runtime's CPU memory arena.

        Raises:
            ModelLoadError: missing file, no card, SHA-256 mismatch, graph not matching its card, an
                unknown provider, an explicitly requested GPU provider that cannot run here.
        """
        import onnxruntime as ort

        model_path = Path(path)
        if not model_path.is_file():
            raise ModelLoadError(f"model file {model_path} does not exist (set MSDN_MODEL_PATH or --model)")
        choice = check_available(parse_providers(list(providers)))
        fp16_path = variant_path(model_path, "fp16")
        fp16_loss = None
        if choice.on_gpu and fp16_path.is_file() and precision != "fp32":
            fp16_loss = read_card(fp16_path)[0].variant_dice_loss
        int8_path = variant_path(model_path, "int8")
        int8_loss = None
        int8_detector_unvalidated = False
        int8_sensitivity_loss: Optional[float] = None
        int8_exists = int8_path.is_file()
        if not choice.on_gpu and int8_exists and precision != "fp32":
            int8_card = read_card(int8_path)[0]
            fp32_card = read_card(model_path)[0]
            source = fp32_card.checkpoint_sha256
            if source and int8_card.checkpoint_sha256 != source:
                # A variant left over from another model (the fp32 file was replaced): never served.
                logger.warning(
                    "%s is not from the checkpoint of %s (checkpoint %s, not %s); ignoring it",
                    int8_path.name,
                    model_path.name,
                    (int8_card.checkpoint_sha256 or "?")[:12],
                    source[:12],
                )
                int8_exists = False
            else:
                int8_loss = int8_card.variant_dice_loss
                calibration = int8_card.detection.calibration if int8_card.detection else None
                int8_detector_unvalidated = "detection" in int8_card.outputs and (
                    calibration is None or calibration.precision != "int8"
                )
                fp32_cal = fp32_card.detection.calibration if fp32_card.detection else None
                if not int8_detector_unvalidated and calibration is not None and fp32_cal is not None:
                    int8_sensitivity_loss = fp32_cal.sensitivity - calibration.sensitivity
        chosen = choose_precision(
            choice.kind,
            precision,
            fp16_file_exists=fp16_path.is_file(),
            fp16_dice_loss=fp16_loss,
            max_dice_loss=fp16_max_dice_loss,
            int8_file_exists=int8_exists,
            int8_dice_loss=int8_loss,
            int8_max_dice_loss=int8_max_dice_loss,
            int8_fast=cpu_has_vnni() or not int8_needs_vnni,
            int8_detector_unvalidated=int8_detector_unvalidated,
            int8_sensitivity_loss=int8_sensitivity_loss,
            int8_max_sensitivity_loss=int8_max_sensitivity_loss,
        )
        serve_path = fp16_path if chosen.use_fp16_file else int8_path if chosen.use_int8_file else model_path
        sha = file_sha256(serve_path)
        try:
            proto = load_onnx(serve_path)  # clear errors for empty, truncated or non-ONNX files
        except ModelFileError as exc:
            raise ModelLoadError(str(exc)) from exc
        metadata = {p.key: p.value for p in proto.metadata_props}
        if GRAPH_SHA256_KEY in metadata and metadata[GRAPH_SHA256_KEY] != graph_sha256(proto):
            raise ModelLoadError(f"{serve_path} is corrupted: its graph does not match the checksum recorded at export")
        del proto
        card, expected = read_card(serve_path, metadata)
        if expected is not None and expected.lower() != sha:
            message = f"{serve_path} has SHA-256 {sha} but its card expects {expected}"
            if verify_sha256:
                raise ModelLoadError(message)
            logger.warning("%s (MSDN_VERIFY_SHA256 is off, serving anyway)", message)
        trt = None
        if choice.kind == "tensorrt":
            trt = TensorrtOptions(
                cache_dir=Path(tensorrt_cache_dir) if tensorrt_cache_dir else None,
                fp16=chosen.precision == "fp16",
                input_name=card.input_name,
                channels=card.input.channels,
                max_batch=batch_size,
                opt_batch=batch_for(512 * 512, batch_size=batch_size, max_pixels=batch_max_pixels),
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(intra_op_threads)
        options.inter_op_num_threads = int(inter_op_threads)
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if intra_op_spinning else "0")
        options.log_severity_level = 3
        options.enable_cpu_mem_arena = bool(cpu_mem_arena)
        requested = session_providers(choice.kind, tensorrt=trt)
        try:
            session = ort.InferenceSession(str(serve_path), sess_options=options, providers=requested)
        except Exception as exc:  # ORT raises its own exception types
            raise ModelLoadError(f"ONNX Runtime cannot load {serve_path} on {choice.kind}: {exc}") from exc
        in_use = session.get_providers()
        if in_use[0] != choice.provider:
            raise ModelLoadError(
                f"ONNX Runtime did not start {choice.provider} for {serve_path} (it runs {in_use}); "
                "its log says why (MSDN_LOG_LEVEL=debug)"
            )
        runtime = cls(
            session,
            card,
            path=serve_path,
            sha256=sha,
            requested_providers=[p if isinstance(p, str) else p[0] for p in requested],
            batch_size=batch_size,
            batch_max_pixels=batch_max_pixels,
            precision=chosen.precision if choice.on_gpu or chosen.use_int8_file else card.precision,
            precision_reason=chosen.reason,
            io_binding=io_binding and choice.on_gpu,
        )
        # Only the CPU provider's arena is shrunk (ONNX Runtime refuses the option without an arena).
        runtime.shrink_arena = bool(cpu_mem_arena) and choice.kind == "cpu"
        logger.info(
            "model %s %s loaded from %s (sha256 %s..., provider %s, %s: %s%s)",
            card.name,
            card.version,
            serve_path,
            sha[:12],
            runtime.provider,
            runtime.precision,
            chosen.reason,
            ", IO binding" if runtime.io_binding else "",
        )
        return runtime

    @classmethod
    def from_settings(cls, settings: "Settings") -> "ModelRuntime":
        """``load`` with the ``MSDN_*`` settings (model, providers, precision, threads, batch, arena, SHA)."""
        runtime = cls.load(
            settings.model_path,
            providers=settings.providers,
            precision=settings.precision,
            fp16_max_dice_loss=settings.fp16_max_dice_loss,
            int8_max_dice_loss=settings.int8_max_dice_loss,
            int8_max_sensitivity_loss=settings.int8_max_sensitivity_loss,
            int8_needs_vnni=settings.int8_needs_vnni,
            tensorrt_cache_dir=settings.tensorrt_cache_dir,
            io_binding=settings.io_binding,
            intra_op_threads=settings.intra_op_threads,
            inter_op_threads=settings.inter_op_threads,
            intra_op_spinning=settings.intra_op_spinning,
            batch_size=settings.batch_size,
            batch_max_pixels=settings.batch_max_pixels,
            verify_sha256=settings.verify_sha256,
            cpu_mem_arena=settings.cpu_mem_arena,
        )
        runtime.overlap = settings.overlap_batches
        runtime.shrink_arena = runtime.shrink_arena and settings.arena_shrinkage
        return runtime

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

    @property
    def device(self) -> str:
        """``cuda`` when the work runs on a GPU provider, else ``cpu``."""
        return "cuda" if self.provider in (CUDA, TENSORRT) else "cpu"

    def run(self, batch: np.ndarray, *, shrink: bool = False) -> dict[str, np.ndarray]:
        """One ONNX Runtime call on (B, C, H, W) float32; returns the named outputs (host arrays).

        ``shrink``: after the call, return the CPU arena's unused growth to the system.
        """
        names = [self.segmentation_output, *(self.detection_outputs or ())]
        x = np.ascontiguousarray(batch, dtype=np.float32)
        options = _shrink_options() if shrink else None
        if self.io_binding:
            return self.run_bound(x, names, run_options=options)
        values = self.session.run(names, {self.input_name: x}, options)
        return dict(zip(names, values, strict=True))

    def run_bound(
        self, x: np.ndarray, names: Sequence[str], *, device: Optional[str] = None, run_options: Any = None
    ) -> dict[str, np.ndarray]:
        """``run`` through IO binding: the batch is copied to ``device`` once, the outputs are
        allocated there by ONNX Runtime and copied back once (no per-call staging in the session).

        Args:
            x: (B, C, H, W) float32, contiguous.
            names: output names.
            device: ``cuda`` or ``cpu`` (default: where the provider runs).
            run_options: ``onnxruntime.RunOptions`` of the call.
        """
        device = device or self.device
        binding = self.session.io_binding()
        if device == "cpu":
            binding.bind_cpu_input(self.input_name, x)
        else:
            import onnxruntime as ort

            binding.bind_ortvalue_input(self.input_name, ort.OrtValue.ortvalue_from_numpy(x, device, 0))
        for name in names:
            binding.bind_output(name, device, 0)
        self.session.run_with_iobinding(binding, run_options)
        return dict(zip(names, binding.copy_outputs_to_cpu(), strict=True))

    def batch_for(self, item_pixels: int) -> int:
        """Items per ONNX Runtime call for items of ``item_pixels`` pixels (height x width) each.

        ``batch_size``, lowered so that a call holds at most ``batch_max_pixels`` pixels, and at least
        1: ONNX Runtime's activations grow with the pixels of a call (at 16 channels, about 86 MiB per
        512 x 512 slice), its time per pixel hardly does, so whole slices run in small batches while
        patches keep ``batch_size``.
        """
        return batch_for(item_pixels, batch_size=self.batch_size, max_pixels=self.batch_max_pixels)

    def run_batched(
        self,
        count: int,
        make_batch: Callable[[int, int], np.ndarray],
        consume: Callable[[int, dict[str, np.ndarray]], None],
        *,
        item_pixels: int,
        check: Optional[Callable[[], None]] = None,
    ) -> RunStats:
        """Run ``count`` items in batches of ``batch_for(item_pixels)``.

        With ``overlap`` (the default) the next batch is made (decoded slices cropped, padded,
        normalised) in a helper thread while ONNX Runtime runs the current one; outputs are consumed
        in this thread, in order. With ``shrink_arena`` the last batch's run returns the CPU arena's
        growth to the system (``memory.enable_memory_arena_shrinkage``), so a large request does not
        leave its peak behind.

        Args:
            count: number of items.
            item_pixels: height x width of one item as fed to the model (after padding).
            make_batch: ``(start, stop) -> (stop - start, C, H, W)`` float32 input.
            consume: ``(start, outputs)`` called with each batch's outputs.
            check: called before each batch (raises to stop, e.g. on a deadline); it may ask
                ``next_batch_items()`` how many items that batch holds.
        """
        stats = RunStats()
        size = self.batch_for(item_pixels)
        starts = list(range(0, count, size))
        if not starts:
            return stats

        def make(start: int) -> np.ndarray:
            return make_batch(start, min(count, start + size))

        def checked(start: int) -> None:
            if check is not None:
                self._next.items = min(count, start + size) - start
                check()

        pool = ThreadPoolExecutor(1, thread_name_prefix="msdn-batch") if self.overlap and len(starts) > 1 else None
        try:
            checked(starts[0])
            pending: Any = make(starts[0])
            for i, start in enumerate(starts):
                batch = pending.result() if isinstance(pending, Future) else pending
                last = i == len(starts) - 1
                if not last:
                    checked(starts[i + 1])
                    pending = pool.submit(make, starts[i + 1]) if pool is not None else None
                t0 = time.perf_counter()
                outputs = self.run(batch, shrink=last and self.shrink_arena)
                stats.seconds += time.perf_counter() - t0
                stats.calls += 1
                stats.items += batch.shape[0]
                del batch
                consume(start, outputs)
                if not last and pool is None:
                    pending = make(starts[i + 1])
        finally:
            self._next.items = 0
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        return stats

    def next_batch_items(self) -> int:
        """Inside a ``check`` called by ``run_batched``: the items of the batch it precedes (this
        thread's call; 0 outside one). What job progress counts."""
        return getattr(self._next, "items", 0)

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
                "spacing_mm": card.input.spacing_mm,
                "orientation": card.input.orientation,
            },
            "model_grid": _grid_note(card),
            "outputs": card.outputs,
            "detection": self.has_detection,
            "precision": self.precision,
            "precision_reason": self.precision_reason,
            "variant_dice_loss": card.variant_dice_loss,
            "opset": card.opset,
            "validation_dice": card.validation_dice,
            "provider": self.provider,
            "providers": self.providers,
            "io_binding": self.io_binding,
            "sha256": self.sha256,
            "file": self.path.name,
            "card": card.to_dict(),
        }


def _grid_note(card: Any) -> str:
    """How inputs meet this model's grid (``msdn_core.grid``), for ``GET /v1/model``."""
    spec = card.input
    if spec.spacing_mm is None and spec.orientation is None:
        return "the card names no model grid: every input is used on its own grid (pixel size and axis order as stored)"
    parts = []
    if spec.orientation is not None:
        parts.append(f"axes permuted and flipped to {spec.orientation}")
    if spec.spacing_mm is not None:
        parts.append(f"resampled to {' x '.join(f'{v:g}' for v in spec.spacing_mm)} mm")
    return "inputs are " + " and ".join(parts) + " before the model runs; answers come back on the input's grid"
