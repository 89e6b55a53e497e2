"""HTTP/1.1 limits uvicorn lacks: header size, and the time to send a request.

uvicorn's httptools protocol (the one ``uvicorn[standard]`` picks) keeps every
header it is sent, without a limit, and waits for a request's bytes for as
long as the client likes: twenty connections each sending a 10 MB header held
243 MB of a worker's memory, and a connection that trickles its headers holds
its memory forever. This protocol is that one with two bounds, from the
settings (``BSO_MAX_HEADER_BYTES``, ``BSO_REQUEST_TIMEOUT_S``):

- the request line plus headers (names, values and 4 bytes of framing each)
  may total ``max_header_bytes``; past that the request is answered ``431``
  and the connection closed, before any more of it is kept;
- a request must be received whole (headers and body) within
  ``request_timeout_s`` of the connection opening or of its first byte on a
  kept-alive connection; otherwise it is answered ``408`` and closed.
  Between requests, uvicorn's keep-alive timeout (5 s) still applies.

It also changes how a connection ends when the server stops (SIGTERM): uvicorn
closes a kept-alive connection that is between requests at once, so a request
the client had just sent on it (3-10 ms after the previous answer, measured)
is reset unread, and the client cannot know whether it was processed. Here
such a connection stays open while the server drains: a request that arrives
on it is answered, with ``Connection: close``, and the connection then closed;
one that receives nothing is closed by the keep-alive timeout (5 s), as it
would be any other time. Requests in flight are answered with
``Connection: close`` as in uvicorn. The drain is bounded by
``BSO_SHUTDOWN_TIMEOUT_S`` (uvicorn's graceful-shutdown timeout).

``bso serve`` runs uvicorn with it (``http="app.http.limits:LimitedHttpToolsProtocol"``).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app.config import get_settings


class _HeaderTooLargeError(Exception):
    """Raised from a parser callback: httptools then stops parsing this data."""


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with a header size limit and a request read timeout."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = get_settings()  # in each worker process, from the same environment
        self.max_header_bytes = settings.max_header_bytes
        self.request_timeout_s = settings.request_timeout_s
        self._header_bytes = 0  # of the current request's complete URL and headers
        self._head_bytes_received = 0  # raw bytes since the last request head was complete
        self._header_too_large = False
        self._receiving_headers = True
        self._request_timer: asyncio.TimerHandle | None = None
        self._draining = False  # the server is stopping: each answer ends its connection

    # ------------------------------------------------------------ the drain

    def shutdown(self) -> None:
        """Called by the server when it stops: end this connection after its next answer."""
        self._draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # answered with Connection: close, then closed
            return
        # Between requests: keep reading; a request that comes is answered and
        # ends the connection. Otherwise the keep-alive timeout closes it.
        if self.timeout_keep_alive_task is None and not self.transport.is_closing():
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

    # -------------------------------------------------------- the timeout

    def _start_request_timer(self) -> None:
        if self._request_timer is None:
            self._request_timer = self.loop.call_later(
                self.request_timeout_s, self._request_timed_out
            )

    def _stop_request_timer(self) -> None:
        if self._request_timer is not None:
            self._request_timer.cancel()
            self._request_timer = None

    def _request_timed_out(self) -> None:
        self._request_timer = None
        if self.transport.is_closing():
            return
        cycle = None if self._receiving_headers else self.cycle
        if cycle is not None:
            if cycle.response_started:  # the app answers already: just end it
                self.transport.close()
                return
            # The app is waiting for the rest of the body: drop what it sends later.
            cycle.disconnected = True
            cycle.message_event.set()
        self._send_error(408, f"Request not received in time (limit {self.request_timeout_s:g} s).")

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_request_timer()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_request_timer()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._header_bytes = 0
        self._receiving_headers = True
        self._start_request_timer()

    def on_headers_complete(self) -> None:
        self._receiving_headers = False
        self._head_bytes_received = 0
        super().on_headers_complete()
        if self._draining and self.cycle is not None:
            self.cycle.keep_alive = False  # a request received while stopping: the last one

    def on_message_complete(self) -> None:
        self._stop_request_timer()
        super().on_message_complete()

    # ------------------------------------------------------- header size

    def data_received(self, data: bytes) -> None:
        # httptools keeps an unfinished header value to itself and reports it
        # only when it ends, so also count the raw bytes of an unfinished head.
        # Body bytes are not counted: the head is complete by then. The count
        # may miss the chunk in which a head starts, so at most limit + one read.
        if self._receiving_headers:
            self._head_bytes_received += len(data)
        super().data_received(data)
        if (
            self._receiving_headers
            and self._head_bytes_received > self.max_header_bytes
            and not self.transport.is_closing()
        ):
            self._header_too_large = True
            self.send_400_response("")

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            self._header_too_large = True
            raise _HeaderTooLargeError

    def on_url(self, url: bytes) -> None:
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count(len(name) + len(value) + 4)  # ": " and CRLF
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        # uvicorn answers any parser error with 400; ours is a header over the limit.
        if self._header_too_large:
            limit = self.max_header_bytes
            self._send_error(431, f"Request headers too large (limit {limit} bytes).")
            return
        super().send_400_response(msg)

    def _send_error(self, status: int, message: str) -> None:
        """Answer ``{"message": ...}`` with ``status`` and close the connection."""
        self._stop_request_timer()
        body = json.dumps({"message": message}, separators=(",", ":")).encode()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        self.transport.close()
