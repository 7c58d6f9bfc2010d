"""uvicorn's h11 protocol with a deadline for request headers (used by ``msdn serve``).

uvicorn closes an idle keep-alive connection after ``timeout_keep_alive``, but any byte received
cancels that timer, and a fresh connection has none: a client that connects and stays silent, or
sends its headers a byte at a time, holds the connection (and its buffers) forever. Here every
connection must deliver complete request headers within ``header_timeout_s`` of being opened (or of
the previous response); otherwise it is closed. The header size limit is uvicorn's
``h11_max_incomplete_event_size``.
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.h11_impl import H11Protocol

logger = logging.getLogger(__name__)


class GuardedH11Protocol(H11Protocol):
    """See module docstring; subclass via :func:`guarded_protocol` to set the timeout."""

    header_timeout_s: float = 10.0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._timed_cycle = None
        super().connection_made(transport)
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():
            logger.info("closing a connection that sent no complete request headers in %.0f s", self.header_timeout_s)
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        cycle = self.cycle
        if cycle is not None and cycle is not self._timed_cycle and not cycle.response_complete:
            self._timed_cycle = cycle  # headers of a new request arrived: the app takes it from here
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)


def guarded_protocol(header_timeout_s: float) -> type[GuardedH11Protocol]:
    """A :class:`GuardedH11Protocol` class with this header timeout."""
    if header_timeout_s <= 0:
        raise ValueError(f"header_timeout_s must be > 0, got {header_timeout_s}")
    return type("GuardedH11Protocol", (GuardedH11Protocol,), {"header_timeout_s": float(header_timeout_s)})
