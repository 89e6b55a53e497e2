"""Slow and oversized clients against a real ``bso serve`` process, over raw sockets.

Headers over BSO_MAX_HEADER_BYTES get 431, a request not received whole within
BSO_REQUEST_TIMEOUT_S gets 408 (a silent connection is closed too), and twenty
such clients at once leave the worker's memory where it was.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.server import Server, bso_args, clean_env, free_port, running_server

TIMEOUT_S = 1.0
MAX_HEADER_BYTES = 16_384  # the default


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    folder = tmp_path_factory.mktemp("limits")
    port = free_port()
    env = clean_env(
        BSO_DATABASE_URL=f"sqlite+aiosqlite:///{folder / 'bso.db'}",
        BSO_LOG_LEVEL="WARNING",
        BSO_REQUEST_TIMEOUT_S=str(TIMEOUT_S),
    )
    args = bso_args("serve", "--host", "127.0.0.1", "--port", str(port))
    with running_server(args, port=port, env=env, log_dir=folder, cwd=folder) as running:
        yield running


def _connect(server: Server) -> socket.socket:
    host, port = server.base_url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    chunks = []
    try:
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    except ConnectionResetError:
        pass
    return b"".join(chunks)


def _send_until_refused(sock: socket.socket, head: bytes, total: int) -> int:
    """Send ``head`` then filler, up to ``total`` bytes; how many went before the server hung up."""
    sent = 0
    try:
        sock.sendall(head)
        sent = len(head)
        filler = b"a" * 65536
        while sent < total:
            sock.sendall(filler)
            sent += len(filler)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_headers_over_the_limit_are_refused_with_431(server: Server) -> None:
    with _connect(server) as sock:
        head = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: "
        _send_until_refused(sock, head, 10_000_000)
        answer = _answer(sock)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b'"message":"Request headers too large (limit 16384 bytes)."' in answer
    # Just under the limit is fine, and so is a normal request afterwards.
    near = {"x-big": "a" * (MAX_HEADER_BYTES - 1000)}
    assert httpx.get(server.base_url + "/healthz", headers=near).status_code == 200
    many = {f"x-h{i}": "v" * 100 for i in range(200)}  # 200 headers, 21 KB in all
    assert httpx.get(server.base_url + "/healthz", headers=many).status_code == 431


def test_a_long_url_counts_towards_the_limit(server: Server) -> None:
    response = httpx.get(server.base_url + "/jobs", params={"job_id_prefix": "x" * 20_000})
    assert response.status_code == 431, response.text


def test_a_client_that_sends_its_headers_slowly_is_cut_off_with_408(server: Server) -> None:
    with _connect(server) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n")
        try:
            for i in range(50):  # a header every 0.1 s: never done within the timeout
                time.sleep(0.1)
                sock.sendall(b"X-Slow-%d: 1\r\n" % i)
        except (BrokenPipeError, ConnectionResetError):
            pass
        answer = _answer(sock)
        elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    assert TIMEOUT_S <= elapsed < TIMEOUT_S + 1.5, elapsed


def test_a_slow_body_and_a_silent_connection_are_cut_off(server: Server) -> None:
    with _connect(server) as sock:
        sock.sendall(
            b"POST /report HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        answer = _answer(sock)  # the rest never comes
    assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
    with _connect(server) as sock:
        started = time.monotonic()
        assert _answer(sock).startswith(b"HTTP/1.1 408 ")  # connected, said nothing
        assert time.monotonic() - started < TIMEOUT_S + 1.5
    # A kept-alive connection may serve requests for longer than the timeout in all.
    with httpx.Client(base_url=server.base_url) as client:
        for _ in range(3):
            assert client.get("/healthz").status_code == 200
            time.sleep(TIMEOUT_S / 2)
        assert client.get("/healthz").status_code == 200


def test_twenty_oversized_or_slow_clients_leave_memory_bounded(server: Server) -> None:
    before = _rss_kib(server.process.pid)
    sockets = [_connect(server) for _ in range(40)]
    try:
        head = b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Big: "
        threads = [
            threading.Thread(target=_send_until_refused, args=(s, head, 10_000_000))
            for s in sockets[:20]
        ]
        for s in sockets[20:]:  # and twenty that trickle
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ")
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        during = _rss_kib(server.process.pid)
        answers = [_answer(s) for s in sockets]
    finally:
        for s in sockets:
            s.close()
    assert [a[:12] for a in answers] == [b"HTTP/1.1 431"] * 20 + [b"HTTP/1.1 408"] * 20
    assert during - before < 20 * 1024, f"RSS grew from {before} to {during} KiB"
    assert httpx.get(server.base_url + "/healthz").status_code == 200
