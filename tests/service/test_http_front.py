"""The HTTP front of a real ``msdn serve`` process, attacked over raw sockets: no key, short bodies,
huge or many headers, idle and slow-header connections."""

from __future__ import annotations

import socket
import sys
import time

import httpx
import pytest

from tests.support.live_server import free_port, start_server, stop_server

API_KEY = "front-test-key"


@pytest.fixture(scope="module")
def server(model_1c, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("front") / "server.log"
    env = {
        "MSDN_MODEL_PATH": str(model_1c),
        "MSDN_INTRA_OP_THREADS": "1",
        "MSDN_WARMUP": "false",
        "MSDN_API_KEYS": API_KEY,
        "MSDN_HEADER_TIMEOUT_S": "1",
        "MSDN_BODY_TIMEOUT_S": "1.5",
        "MSDN_KEEP_ALIVE_S": "1",
        "MSDN_MAX_HEADER_BYTES": "16384",
        "MSDN_MAX_HEADER_COUNT": "50",
        "MSDN_PACS_PROTOCOL": "none",
    }
    args = [sys.executable, "-c", "from model_export.cli import main; raise SystemExit(main())", "serve"]
    proc = start_server(args + ["--port", str(port)], env, port, log)
    yield port
    stop_server(proc)


def exchange(port: int, data: bytes, *, wait_s: float = 5.0) -> tuple[bytes, float]:
    """Send ``data`` on a new connection; what comes back until the server closes (or ``wait_s``)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=wait_s) as sock:
        sock.sendall(data)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return answer, time.monotonic() - start


def test_no_key_is_refused_before_the_body_is_read(server):
    head = (
        b"POST /segment HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: 200000000\r\n\r\n"
    )
    answer, elapsed = exchange(server, head + b"\0" * 1024)  # 1 KiB of the announced 200 MB
    assert answer.startswith(b"HTTP/1.1 401"), answer[:200]
    assert b'"code":"unauthorized"' in answer
    assert elapsed < 1.4  # the 401 came before the body deadline (1.5 s): the body was never awaited
    assert httpx.get(f"http://127.0.0.1:{server}/healthz").status_code == 200  # probes stay open
    assert httpx.get(f"http://127.0.0.1:{server}/readyz").status_code == 200


def test_a_body_shorter_than_its_content_length_times_out(server):
    head = (
        f"POST /segment HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\nContent-Type: multipart/form-data; "
        "boundary=b\r\nContent-Length: 5000\r\n\r\n"
    ).encode()
    answer, elapsed = exchange(server, head + b"--b\r\n")
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert b'"code":"body_timeout"' in answer
    assert elapsed < 4.5


def test_header_limits(server):
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n"
    answer, _ = exchange(server, big)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    # 8 MiB of unfinished header: uvicorn (h11) gives up at MSDN_MAX_HEADER_BYTES, not at the end.
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
        try:
            for _ in range(128):
                sock.sendall(b"a" * 65536)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            answer = sock.recv(65536)
        except ConnectionResetError:
            answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:200]
    many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-H%d: 1\r\n" % i for i in range(80)) + b"\r\n"
    answer, _ = exchange(server, many)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:200]
    assert b'"code":"headers_too_large"' in answer


def test_idle_and_slow_header_connections_are_closed(server):
    answer, elapsed = exchange(server, b"")  # connect, say nothing
    assert answer == b"" and elapsed < 4
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", server), timeout=5) as sock:
        closed = False
        for byte in b"GET /healthz HTTP/1.1\r\nHost: x\r\n":  # one byte every 0.2 s: never complete in 1 s
            try:
                sock.sendall(bytes([byte]))
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            time.sleep(0.2)
            sock.setblocking(False)
            try:
                if sock.recv(1) == b"":
                    closed = True
                    break
            except BlockingIOError:
                pass
            finally:
                sock.setblocking(True)
    assert closed and time.monotonic() - start < 4
