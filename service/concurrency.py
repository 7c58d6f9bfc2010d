"""Bounded inference: a fixed number of running jobs, a small waiting room, a time limit.

``InferenceLimiter.run(job)`` runs ``job(deadline)`` in a worker thread (ONNX Runtime releases the
GIL) so the event loop stays free. At most ``max_concurrent`` jobs run; at most ``max_queued``
requests wait for a slot, each for at most ``queue_timeout_s``; past either bound the answer is
``Overloaded`` (503 with Retry-After), never an unbounded queue. A job running past
``request_timeout_s`` is answered ``RequestTimeout`` (504); the job sees its ``Deadline`` expire at
its next ``check()`` (between model batches) and stops, and its slot is freed only when its thread
really ends, so the bound on running work holds.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Optional, TypeVar

from service.errors import Overloaded, RequestTimeout

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Deadline:
    """A point in time after which a job should stop; ``check()`` raises ``RequestTimeout``."""

    def __init__(self, seconds: Optional[float]) -> None:
        self.seconds = seconds
        self.expires = None if seconds is None else time.monotonic() + seconds
        self.cancelled = False

    def remaining(self) -> Optional[float]:
        return None if self.expires is None else self.expires - time.monotonic()

    def check(self) -> None:
        """Raise ``RequestTimeout`` when the deadline has passed or the request was given up."""
        if self.cancelled or (self.expires is not None and time.monotonic() > self.expires):
            raise RequestTimeout(f"processing took longer than {self.seconds:g} s (MSDN_REQUEST_TIMEOUT_S)")


class InferenceLimiter:
    """See module docstring."""

    def __init__(
        self,
        *,
        max_concurrent: int,
        max_queued: int,
        queue_timeout_s: float,
        request_timeout_s: float,
        retry_after_s: int,
        on_change: Optional[Callable[[int, int], None]] = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError(f"max_concurrent must be >= 1, got {max_concurrent!r}")
        if max_queued < 0:
            raise ValueError(f"max_queued must be >= 0, got {max_queued!r}")
        self.max_concurrent = max_concurrent
        self.max_queued = max_queued
        self.queue_timeout_s = queue_timeout_s
        self.request_timeout_s = request_timeout_s
        self.retry_after_s = retry_after_s
        self._on_change = on_change
        self._slots = asyncio.Semaphore(max_concurrent)
        self._running = 0
        self._waiting = 0
        self._executor = ThreadPoolExecutor(max_workers=max_concurrent, thread_name_prefix="msdn-inference")

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._waiting

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self._running, self._waiting)

    def _overloaded(self, why: str) -> Overloaded:
        return Overloaded(
            f"the service is busy ({why}); retry in {self.retry_after_s} s", retry_after_s=self.retry_after_s
        )

    def admit(self) -> None:
        """Raise ``Overloaded`` now when a new job could not even wait (check before costly work,
        such as downloading a series; ``run`` checks again)."""
        if self._running + self._waiting >= self.max_concurrent + self.max_queued:
            raise self._overloaded(f"{self._running} running, {self._waiting} waiting")

    async def _acquire(self) -> None:
        self.admit()
        self._waiting += 1
        self._changed()
        try:
            await asyncio.wait_for(self._slots.acquire(), timeout=self.queue_timeout_s)
        except asyncio.TimeoutError:
            raise self._overloaded(f"no free inference slot within {self.queue_timeout_s:g} s") from None
        finally:
            self._waiting -= 1
            self._changed()
        self._running += 1
        self._changed()

    def _release(self, _: object = None) -> None:
        self._running -= 1
        self._slots.release()
        self._changed()

    async def run(self, job: Callable[[Deadline], T]) -> T:
        """Run ``job(deadline)`` in a worker thread under the bounds (module docstring)."""
        await self._acquire()
        deadline = Deadline(self.request_timeout_s)
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, functools.partial(job, deadline))
        except BaseException:
            self._release()
            raise
        future.add_done_callback(self._release)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout=self.request_timeout_s)
        except asyncio.TimeoutError:
            deadline.cancelled = True
            future.add_done_callback(_log_late_failure)
            raise RequestTimeout(
                f"processing took longer than {self.request_timeout_s:g} s (MSDN_REQUEST_TIMEOUT_S)"
            ) from None
        except asyncio.CancelledError:
            deadline.cancelled = True
            future.add_done_callback(_log_late_failure)
            raise

    def shutdown(self) -> None:
        """Stop the worker threads after the running jobs."""
        self._executor.shutdown(wait=True, cancel_futures=True)


def _log_late_failure(future: "asyncio.Future[object]") -> None:
    if not future.cancelled() and future.exception() is not None and not isinstance(future.exception(), RequestTimeout):
        logger.warning("a job given up after its deadline failed: %s", type(future.exception()).__name__)
