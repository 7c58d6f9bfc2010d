"""Retry delays: exponential, capped, Retry-After honoured, nothing past the deadline."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from service.jobs.backoff import Backoff, parse_retry_after


def test_delays_double_up_to_the_cap():
    backoff = Backoff(initial_s=1, max_s=5, deadline_s=100)
    assert [backoff.delay(a) for a in range(1, 6)] == [1, 2, 4, 5, 5]


def test_retry_after_wins_when_longer():
    backoff = Backoff(initial_s=1, max_s=60, deadline_s=100)
    assert backoff.delay(1, retry_after_s=7) == 7
    assert backoff.delay(4, retry_after_s=3) == 8  # the back-off is longer already
    assert backoff.delay(1, retry_after_s=10_000) == 60  # a huge Retry-After is capped


def test_no_attempt_past_the_deadline():
    backoff = Backoff(initial_s=4, max_s=4, deadline_s=10)
    assert backoff.next_attempt_at(first_attempt_at=0, now=5, attempt=1) == 9
    assert backoff.next_attempt_at(first_attempt_at=0, now=7, attempt=2) is None


def test_parse_retry_after():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    in_ten = parse_retry_after(formatdate(time.time() + 10, usegmt=True))
    assert in_ten is not None and 8 <= in_ten <= 11


@pytest.mark.parametrize("kwargs", [{"initial_s": 0}, {"initial_s": 2, "max_s": 1}, {"deadline_s": -1}])
def test_invalid_arguments(kwargs):
    with pytest.raises(ValueError):
        Backoff(**kwargs)
