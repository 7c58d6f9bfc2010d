"""Retry delays: exponential back-off, a server's Retry-After honoured, all within a deadline."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class Backoff:
    """Delay before retry ``attempt`` (1 = first retry): ``initial_s * 2**(attempt-1)`` capped at ``max_s``.

    Args:
        initial_s: first delay.
        max_s: longest delay between two attempts.
        deadline_s: no attempt is started later than this after the first one.
    """

    initial_s: float = 1.0
    max_s: float = 60.0
    deadline_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.initial_s <= 0:
            raise ValueError(f"initial_s must be > 0, got {self.initial_s}")
        if self.max_s < self.initial_s:
            raise ValueError(f"max_s must be >= initial_s, got {self.max_s}")
        if self.deadline_s < 0:
            raise ValueError(f"deadline_s must be >= 0, got {self.deadline_s}")

    def delay(self, attempt: int, *, retry_after_s: Optional[float] = None) -> float:
        """Seconds to wait before retry ``attempt``; a server's Retry-After wins when it is longer."""
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt}")
        base = min(self.max_s, self.initial_s * 2 ** min(attempt - 1, 30))
        if retry_after_s is not None and retry_after_s > base:
            return min(float(retry_after_s), max(self.max_s, base))
        return base

    def next_attempt_at(
        self, *, first_attempt_at: float, now: float, attempt: int, retry_after_s: Optional[float] = None
    ) -> Optional[float]:
        """When retry ``attempt`` should start, or None when that is past the deadline."""
        at = now + self.delay(attempt, retry_after_s=retry_after_s)
        if at > first_attempt_at + self.deadline_s:
            return None
        return at


def parse_retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds from an HTTP ``Retry-After`` header (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    import time
    from email.utils import parsedate_to_datetime

    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
