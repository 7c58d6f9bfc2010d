"""A small HTTP proxy in front of a real Orthanc that injects faults: 503s (with Retry-After) and delays.

``FaultProxy(upstream).start()``; ``proxy.fail(method, path_part, times, status, retry_after)`` makes
the next ``times`` matching requests answer ``status`` without reaching Orthanc; ``proxy.delay_s``
holds every answer back. ``proxy.log`` records (time, method, path, status) of every request.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

_HOP_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "host", "content-encoding"}


@dataclass
class _Rule:
    method: str
    path_part: str
    times: int
    status: int
    retry_after: str | None
    every: int = 1
    seen: int = 0


class FaultProxy:
    """See module docstring."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.rules: list[_Rule] = []
        self.delay_s = 0.0
        self.log: list[tuple[float, str, str, int]] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._session = requests.Session()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def fail(
        self,
        method: str,
        path_part: str,
        *,
        times: int,
        status: int = 503,
        retry_after: str | None = "1",
        every: int = 1,
    ) -> None:
        """The next ``times`` matching requests (-1: all), or every ``every``-th of them, get ``status``."""
        with self._lock:
            self.rules.append(_Rule(method.upper(), path_part, times, status, retry_after, every))

    def _injected(self, method: str, path: str) -> _Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.times != 0 and rule.method in (method, "*") and rule.path_part in path:
                    rule.seen += 1
                    if rule.seen % rule.every:
                        continue
                    rule.times -= 1 if rule.times > 0 else 0
                    return rule
        return None

    def requests_to(self, method: str, path_part: str) -> list[tuple[float, int]]:
        with self._lock:
            return [(t, s) for t, m, p, s in self.log if m == method and path_part in p]

    def start(self) -> FaultProxy:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                if proxy.delay_s:
                    time.sleep(proxy.delay_s)
                rule = proxy._injected(self.command, self.path)
                if rule is not None:
                    status, content = rule.status, b'{"error": "injected"}'
                    headers = {"Content-Type": "application/json"}
                    if rule.retry_after is not None:
                        headers["Retry-After"] = rule.retry_after
                else:
                    forwarded = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_HEADERS}
                    upstream = proxy._session.request(
                        self.command, proxy.upstream + self.path, headers=forwarded, data=body, timeout=60
                    )
                    status, content = upstream.status_code, upstream.content
                    headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS}
                with proxy._lock:  # logged before the answer leaves: a client never sees it unlogged
                    proxy.log.append((time.monotonic(), self.command, self.path, status))
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PUT = do_DELETE = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self._session.close()
