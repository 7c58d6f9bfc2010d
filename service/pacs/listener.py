"""Push listener: series sent to our Storage SCP are assembled, segmented, and the SEG sent back.

A modality or PACS pushes a series (C-STORE) to msdn's AE title. :class:`SeriesAssembler` groups the
instances by SeriesInstanceUID; a series is complete once no instance of it arrived for
``idle_s`` seconds (DICOM has no "end of series" message). Complete series are handed, one at a
time, to ``on_series`` in a worker thread; :func:`auto_segment_handler` builds the usual one:
segment with the pipeline, store the SEG to the PACS.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom import Dataset

from service.pacs.base import PacsClient, sort_instances
from service.pacs.storage import STATUS_OUT_OF_RESOURCES, STATUS_SUCCESS

logger = logging.getLogger(__name__)

#: Called with the datasets of a complete series and the AE title that sent it.
SeriesHandler = Callable[[list[Dataset], str], None]


@dataclass
class _PendingSeries:
    series_uid: str
    calling_ae: str
    datasets: list[Dataset] = field(default_factory=list)
    nbytes: int = 0
    last_seen: float = 0.0
    refused: bool = False


class SeriesAssembler:
    """Collects pushed instances per series and emits each series once it has been quiet.

    Args:
        on_series: called in the worker thread with each complete series.
        idle_s: quiet time after which a series is complete.
        max_instances / max_bytes: per-series limits; instances beyond them are refused (0xA700) and
            the series is dropped with a warning.
        max_pending_series: most series assembled at once; instances of a further series are refused.
    """

    def __init__(
        self,
        on_series: SeriesHandler,
        *,
        idle_s: float = 5.0,
        max_instances: int = 2000,
        max_bytes: int = 2 * 1024**3,
        max_pending_series: int = 16,
    ) -> None:
        if idle_s <= 0:
            raise ValueError(f"idle_s must be > 0, got {idle_s}")
        if max_instances < 1 or max_bytes < 1 or max_pending_series < 1:
            raise ValueError("max_instances, max_bytes and max_pending_series must be >= 1")
        self.on_series = on_series
        self.idle_s = idle_s
        self.max_instances = max_instances
        self.max_bytes = max_bytes
        self.max_pending_series = max_pending_series
        self._pending: dict[str, _PendingSeries] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.completed = 0
        self.failed = 0

    # --- receiving (Storage SCP threads) -----------------------------------------------------

    def add(self, dataset: Dataset, nbytes: int, calling_ae: str) -> int:
        """Take one pushed instance; returns the C-STORE status (usable as ``on_unexpected``)."""
        series_uid = str(dataset.get("SeriesInstanceUID", ""))
        if not series_uid:
            logger.warning("push listener: refused an instance without SeriesInstanceUID")
            return 0xA900
        with self._lock:
            pending = self._pending.get(series_uid)
            if pending is None:
                if len(self._pending) >= self.max_pending_series:
                    logger.warning(
                        "push listener: %d series pending, refused series %s", len(self._pending), series_uid
                    )
                    return STATUS_OUT_OF_RESOURCES
                pending = self._pending[series_uid] = _PendingSeries(series_uid, calling_ae)
            pending.last_seen = time.monotonic()
            if pending.refused:
                return STATUS_OUT_OF_RESOURCES
            if len(pending.datasets) + 1 > self.max_instances or pending.nbytes + nbytes > self.max_bytes:
                logger.warning(
                    "push listener: series %s over max_instances=%d / max_series_bytes=%d; dropped",
                    series_uid,
                    self.max_instances,
                    self.max_bytes,
                )
                pending.refused = True
                pending.datasets.clear()
                return STATUS_OUT_OF_RESOURCES
            pending.datasets.append(dataset)
            pending.nbytes += nbytes
        return STATUS_SUCCESS

    # --- emitting (worker thread) ------------------------------------------------------------

    def start(self) -> SeriesAssembler:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="msdn-push-listener", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the worker; series still assembling are dropped (they were not acknowledged as done)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _loop(self) -> None:
        tick = min(0.5, self.idle_s / 4)
        while not self._stop.wait(tick):
            for pending in self._take_complete():
                self._emit(pending)

    def _take_complete(self) -> list[_PendingSeries]:
        now = time.monotonic()
        with self._lock:
            done = [p for p in self._pending.values() if now - p.last_seen >= self.idle_s]
            for pending in done:
                del self._pending[pending.series_uid]
        return [p for p in done if not p.refused and p.datasets]

    def _emit(self, pending: _PendingSeries) -> None:
        start = time.perf_counter()
        try:
            self.on_series(sort_instances(pending.datasets), pending.calling_ae)
        except Exception:  # keep listening; the error is logged with UIDs only
            self.failed += 1
            logger.exception("push listener: series %s from %s failed", pending.series_uid, pending.calling_ae)
            return
        self.completed += 1
        logger.info(
            "push listener: series %s (%d instances) from %s done in %.2fs",
            pending.series_uid,
            len(pending.datasets),
            pending.calling_ae,
            time.perf_counter() - start,
        )


def auto_segment_handler(
    get_pipeline: Callable[[], Callable[[list[Dataset]], Dataset]],
    client: PacsClient | None,
    *,
    send_result: bool = True,
) -> SeriesHandler:
    """``on_series`` that segments a pushed series and stores the SEG with ``client``.

    Args:
        get_pipeline: returns the pipeline at the time a series completes (the model may load later).
        client: the PACS client the SEG is stored with (``None``: keep nothing, only log).
        send_result: store the SEG (False: segment only, e.g. to warm up or test).
    """

    def handle(datasets: list[Dataset], calling_ae: str) -> None:
        seg = get_pipeline()(datasets)
        if send_result and client is not None:
            client.store([seg])
            logger.info("push listener: SEG %s stored to %s", seg.SOPInstanceUID, client.describe())

    return handle
