"""Load on a server: the lean HTTP client the load generators use, and the machine's own load."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any
from urllib.parse import urlencode, urlsplit

from bench.servers import CLK_TCK

# ------------------------------------------------------------ lean client


class RawResponse:
    """What the benchmarks read from a response: the status and the JSON body."""

    __slots__ = ("content", "status_code")

    def __init__(self, status_code: int, content: bytes) -> None:
        self.status_code = status_code
        self.content = content

    def json(self) -> Any:
        return json.loads(self.content)


class RawClientError(Exception):
    """The connection broke or the server answered something unparsable."""


class RawClient:
    """A minimal HTTP/1.1 keep-alive client: a pool of ``size`` raw asyncio connections.

    httpx costs about 1.6 ms of CPU per request on this machine's cores (and
    its pool slows down with 32 connections), so with the server on the same
    2 cores it, not the server, sets the hello-world "ceiling". This client
    writes pre-formatted requests and reads ``Content-Length`` (or chunked)
    responses, several times cheaper. Same call shape as ``httpx.AsyncClient``
    for what the benchmarks use.
    """

    def __init__(self, base_url: str, size: int, headers: dict[str, str] | None = None) -> None:
        parsed = urlsplit(base_url)
        self.host = parsed.hostname or "127.0.0.1"
        self.port = parsed.port or 80
        self.host_header = f"{self.host}:{self.port}".encode()
        self.size = size
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.slots = asyncio.Semaphore(size)
        self.everyone: set[asyncio.StreamWriter] = set()
        # Sent with every request, e.g. {"authorization": "Bearer ..."}.
        self.extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())

    async def __aenter__(self) -> RawClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        for writer in list(self.everyone):
            writer.close()
        self.everyone.clear()
        self.idle.clear()

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.everyone.add(writer)
        return reader, writer

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, Any] | None = None,
    ) -> RawResponse:
        if params:
            path = f"{path}?{urlencode(params)}"
        body = b"" if json is None else _dumps(json)
        head = (
            f"{method} {path} HTTP/1.1\r\nhost: {self.host}:{self.port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n{self.extra}\r\n"
        ).encode()
        async with self.slots:
            reused = bool(self.idle)
            reader, writer = self.idle.pop() if reused else await self._connect()
            try:
                writer.write(head + body)
                status, content, keep = await _read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                writer.close()
                self.everyone.discard(writer)
                stale = (isinstance(exc, asyncio.IncompleteReadError) and not exc.partial) or (
                    isinstance(exc, ConnectionResetError | BrokenPipeError)
                )
                if not (reused and stale):
                    raise RawClientError(f"{type(exc).__name__}: {exc}") from exc
                # The server closed this idle keep-alive connection (uvicorn's
                # keep-alive timeout) before reading the request (no answer, or a
                # reset when the close crossed our write): send it again
                # on a fresh one, as HTTP clients do.
                reader, writer = await self._connect()
                try:
                    writer.write(head + body)
                    status, content, keep = await _read_response(reader)
                except (OSError, asyncio.IncompleteReadError, ValueError) as again:
                    writer.close()
                    self.everyone.discard(writer)
                    raise RawClientError(f"{type(again).__name__}: {again}") from again
            if keep:
                self.idle.append((reader, writer))
            else:
                writer.close()
                self.everyone.discard(writer)
        return RawResponse(status, content)


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length: int | None = None
    chunked = False
    keep = True
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value.lower():
            chunked = True
        elif name == "connection" and value.strip().lower() == "close":
            keep = False
    if chunked:
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await reader.readuntil(b"\r\n")
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        return status, b"".join(parts), keep
    if length is None:
        return status, await reader.read(), False
    return status, await reader.readexactly(length), keep


# ------------------------------------------------------- background load


def machine_cpu_seconds() -> float:
    """CPU seconds all processes have used (user, nice, system, irq, softirq, steal)."""
    with open("/proc/stat") as handle:
        fields = [int(v) for v in handle.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / CLK_TCK


def busy_cores(seconds: float = 1.0) -> float:
    start = machine_cpu_seconds()
    time.sleep(seconds)
    return (machine_cpu_seconds() - start) / seconds


def wait_until_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to ``max_wait`` s) until the machine is nearly idle; return the busy cores.

    Other work on this machine (a test suite, another benchmark) shares the
    same cores and skews every number; the results report how busy other
    processes were during each run.
    """
    deadline = time.monotonic() + max_wait
    busy = busy_cores()
    while busy > threshold and time.monotonic() < deadline:
        print(f"  (machine busy: {busy:.2f} cores used by other processes; waiting)", flush=True)
        time.sleep(4)
        busy = busy_cores()
    if busy > threshold:
        print(f"  WARNING: still {busy:.2f} cores busy; numbers will be skewed", flush=True)
    return busy
