"""An HTTP reverse proxy in front of a real server that answers chosen requests with a 5xx.

What a load balancer or a crashing server does to a client: the request is
passed on to the server (which may well apply it) and the client gets a 500
instead of the answer, its outcome unknown. Every other request is passed on
unchanged, over real sockets both ways.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

from tests.support.server import free_port

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


@dataclass
class Faults:
    """Which requests get a 5xx: (method, path) -> statuses still to give, in order."""

    pending: dict[tuple[str, str], list[int]] = field(default_factory=dict)
    seen: list[tuple[str, str, int]] = field(default_factory=list)  # what the client got
    forwarded: list[tuple[str, str]] = field(default_factory=list)  # what reached the server
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, method: str, path: str, *statuses: int) -> None:
        with self.lock:
            self.pending.setdefault((method, path), []).extend(statuses)

    def take(self, method: str, path: str) -> int | None:
        with self.lock:
            queued = self.pending.get((method, path))
            return queued.pop(0) if queued else None

    def count(self, method: str, path: str) -> int:
        """Requests of the kind that reached the server."""
        with self.lock:
            return self.forwarded.count((method, path))


@contextmanager
def fault_proxy(upstream: str, faults: Faults) -> Iterator[str]:
    """Serve the proxy until the block ends; yields its base URL."""
    upstream_client = httpx.Client(base_url=upstream, timeout=60)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def _handle(self) -> None:
            path = self.path.split("?", 1)[0]
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            answer = upstream_client.request(self.command, self.path, content=body,
                                             headers=headers)  # fmt: skip
            with faults.lock:
                faults.forwarded.append((self.command, path))
            status = faults.take(self.command, path)
            if status is None:
                status, content = answer.status_code, answer.content
                content_type = answer.headers.get("content-type", "application/json")
            else:  # the server's answer is lost; a bare 5xx comes instead
                content, content_type = b"Internal Server Error", "text/plain"
            with faults.lock:
                faults.seen.append((self.command, path, status))
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PATCH = do_DELETE = _handle  # noqa: N815 (http.server's names)

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, name="fault-proxy", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        upstream_client.close()
        thread.join(10)
