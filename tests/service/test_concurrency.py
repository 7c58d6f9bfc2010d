"""service.concurrency: bounded slots, bounded waiting, time limit (real threads, real event loop)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from service.concurrency import Deadline, InferenceLimiter
from service.errors import Overloaded, RequestTimeout


def limiter(**kw) -> InferenceLimiter:
    values = {
        "max_concurrent": 1,
        "max_queued": 1,
        "queue_timeout_s": 5.0,
        "request_timeout_s": 5.0,
        "retry_after_s": 7,
    }
    values.update(kw)
    return InferenceLimiter(**values)


def test_runs_in_a_worker_thread_and_returns():
    async def main():
        lim = limiter()
        name = await lim.run(lambda deadline: threading.current_thread().name)
        lim.shutdown()
        return name

    assert asyncio.run(main()).startswith("msdn-inference")


def test_full_slots_and_waiting_room_give_503_with_retry_after():
    async def main():
        lim = limiter(max_concurrent=1, max_queued=1)
        release = threading.Event()
        first = asyncio.create_task(lim.run(lambda d: release.wait(5)))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(lim.run(lambda d: "second"))  # waits in the room
        await asyncio.sleep(0.05)
        assert (lim.running, lim.waiting) == (1, 1)
        with pytest.raises(Overloaded) as err:
            await lim.run(lambda d: "third")
        assert err.value.headers["Retry-After"] == "7" and err.value.status == 503
        release.set()
        assert await first is True and await second == "second"
        assert (lim.running, lim.waiting) == (0, 0)
        lim.shutdown()

    asyncio.run(main())


def test_queue_timeout():
    async def main():
        lim = limiter(max_queued=1, queue_timeout_s=0.1)
        release = threading.Event()
        first = asyncio.create_task(lim.run(lambda d: release.wait(5)))
        await asyncio.sleep(0.05)
        with pytest.raises(Overloaded, match="within 0.1 s"):
            await lim.run(lambda d: None)
        release.set()
        await first
        lim.shutdown()

    asyncio.run(main())


def test_request_timeout_frees_the_slot_only_when_the_job_stops():
    async def main():
        lim = limiter(request_timeout_s=0.2)
        stopped = threading.Event()

        def job(deadline: Deadline):
            while True:  # a cooperative job: checks its deadline between "batches"
                try:
                    deadline.check()
                except RequestTimeout:
                    stopped.set()
                    raise
                time.sleep(0.01)

        t0 = time.monotonic()
        with pytest.raises(RequestTimeout, match="longer than 0.2 s"):
            await lim.run(job)
        assert time.monotonic() - t0 < 2
        await asyncio.sleep(0.1)
        assert stopped.is_set() and lim.running == 0
        assert await lim.run(lambda d: 42) == 42
        lim.shutdown()

    asyncio.run(main())


def test_deadline():
    Deadline(None).check()
    d = Deadline(0.0)
    time.sleep(0.001)
    with pytest.raises(RequestTimeout):
        d.check()
