"""PACS network I/O in its own bounded thread pool, each call under an overall deadline.

A slow or silent PACS then ties up at most ``max_workers`` threads of this pool, never the event
loop's default pool that ``/readyz``, ``/v1/model`` or ``/segment`` use; calls beyond
``max_workers + max_queued`` are refused at once (``pacs_busy``), and a call that has not finished
within its deadline is answered ``pacs_timeout`` (its thread ends at the client's socket timeout).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Optional, TypeVar

from msdn_core.errors import ErrorCode
from service.pacs.errors import PacsError, PacsTimeoutError

logger = logging.getLogger(__name__)

T = TypeVar("T")


class PacsPoolFullError(PacsError):
    """Every PACS I/O worker is busy and the waiting room is full."""

    code = ErrorCode.PACS_BUSY
    transient = True


class PacsIoPool:
    """See module docstring.

    Args:
        max_workers: PACS calls running at once.
        max_queued: calls allowed to wait for a worker.
        deadline_s: default overall time limit of one call (fetch, store, query).
    """

    def __init__(self, *, max_workers: int = 8, max_queued: int = 16, deadline_s: float = 300.0) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1, got {max_workers}")
        if max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, got {max_queued}")
        if deadline_s <= 0:
            raise ValueError(f"deadline_s must be > 0, got {deadline_s}")
        self.max_workers = max_workers
        self.max_queued = max_queued
        self.deadline_s = deadline_s
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="msdn-pacs-io")
        self._lock = threading.Lock()
        self._in_flight = 0

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def submit(self, function: Callable[[], T], *, what: str) -> Future:
        with self._lock:
            if self._in_flight >= self.max_workers + self.max_queued:
                raise PacsPoolFullError(
                    f"{what}: {self._in_flight} PACS calls in progress, the limit is "
                    f"{self.max_workers + self.max_queued} (MSDN_PACS_IO_WORKERS + MSDN_PACS_IO_MAX_QUEUED)",
                    retry_after_s=5,
                )
            self._in_flight += 1
        future = self._executor.submit(function)
        future.add_done_callback(self._done)
        return future

    def _done(self, _: Future) -> None:
        with self._lock:
            self._in_flight -= 1

    def _timeout(self, what: str, deadline_s: float) -> PacsTimeoutError:
        return PacsTimeoutError(f"{what}: the PACS did not finish within {deadline_s:g} s (MSDN_PACS_IO_DEADLINE_S)")

    def run_sync(self, function: Callable[[], T], *, what: str, deadline_s: Optional[float] = None) -> T:
        """Run in the pool from a worker thread; raises PacsTimeoutError past the deadline."""
        deadline_s = deadline_s or self.deadline_s
        future = self.submit(function, what=what)
        try:
            return future.result(timeout=deadline_s)
        except FutureTimeout:
            raise self._timeout(what, deadline_s) from None

    async def run(self, function: Callable[[], T], *, what: str, deadline_s: Optional[float] = None) -> T:
        """Run in the pool from async code; raises PacsTimeoutError past the deadline."""
        deadline_s = deadline_s or self.deadline_s
        future = asyncio.wrap_future(self.submit(function, what=what))
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=deadline_s)
        except asyncio.TimeoutError:
            raise self._timeout(what, deadline_s) from None

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
