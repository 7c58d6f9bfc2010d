"""service.shutdown: a request cancelled at the end of the shutdown grace is answered 503, not 500."""

from __future__ import annotations

import asyncio
import json

import pytest

from service.shutdown import ShutdownMiddleware


async def _run_cancelled(app, *, cancel_after_s: float = 0.05) -> list[dict]:
    sent: list[dict] = []

    async def receive():
        await asyncio.Event().wait()  # the body never finishes arriving

    async def send(message):
        sent.append(message)

    task = asyncio.ensure_future(ShutdownMiddleware(app, retry_after_s=7)({"type": "http"}, receive, send))
    await asyncio.sleep(cancel_after_s)
    task.cancel()  # what uvicorn does once MSDN_SHUTDOWN_TIMEOUT_S has passed
    try:
        await task
    except asyncio.CancelledError:
        pass
    return sent


def test_a_request_cancelled_before_its_answer_gets_503():
    async def slow_app(scope, receive, send):
        await receive()

    sent = asyncio.run(_run_cancelled(slow_app))
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 503 and (b"retry-after", b"7") in sent[0]["headers"]
    body = json.loads(sent[1]["body"])
    assert body["code"] == "not_ready" and "shutting down" in body["message"]


def test_an_answer_already_started_is_left_alone():
    async def streaming_app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await receive()

    sent = asyncio.run(_run_cancelled(streaming_app))
    assert [m.get("status") for m in sent] == [200]  # no second start: the connection is just cut


def test_retry_after_is_validated():
    with pytest.raises(ValueError, match="retry_after_s"):
        ShutdownMiddleware(lambda *a: None, retry_after_s=0)
