"""A TCP proxy in front of PostgreSQL that cuts a connection at a chosen point of a transaction.

Deterministic crashes: the proxy reads the frontend protocol (the messages a
client sends; https://www.postgresql.org/docs/current/protocol-message-formats.html)
and, when armed, cuts both sides of the next transaction's connection

- before its k-th statement reaches the server (``Cut.statement(k)``: the
  statements before it ran, none after; the server rolls back),
- before its COMMIT (``Cut.before_commit()``: every statement ran; rolled back),
- or after its COMMIT, once the server answered it, without passing the answer on
  (``Cut.after_commit()``: committed, and the client never learns it).

asyncpg opens transactions with a simple-protocol ``BEGIN`` and ends them with
``COMMIT``; statements run in the extended protocol, one Execute message each.
SSL is refused on the proxy's side so that the messages can be read.
"""

from __future__ import annotations

import asyncio
import struct
from contextlib import suppress
from dataclasses import dataclass

_SSL_REQUEST = 80877103
_GSSENC_REQUEST = 80877104


@dataclass(frozen=True)
class Cut:
    """Where to cut the next transaction: before statement ``k`` (1-based) or at its COMMIT."""

    statement: int | None = None
    commit: str | None = None  # "before" or "after"

    @classmethod
    def before_statement(cls, k: int) -> Cut:
        return cls(statement=k)

    @classmethod
    def before_commit(cls) -> Cut:
        return cls(commit="before")

    @classmethod
    def after_commit(cls) -> Cut:
        return cls(commit="after")


class PgProxy:
    """``async with PgProxy(host, port) as proxy``: listens on ``proxy.port``."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._cut: Cut | None = None
        self.fired = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> PgProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        with suppress(asyncio.CancelledError):
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._server.wait_closed()

    def arm(self, cut: Cut) -> None:
        """Cut the next transaction (of any connection) at ``cut``; once."""
        self._cut, self.fired = cut, False

    def disarm(self) -> None:
        self._cut = None

    # ------------------------------------------------------------ connections

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        server_w: asyncio.StreamWriter | None = None
        try:
            server_r, server_w = await asyncio.open_connection(*self.upstream)
            link = _Link(client_w, server_w)
            upstream = asyncio.create_task(self._pump_server(server_r, link))
            try:
                await self._pump_client(client_r, link)
            finally:
                upstream.cancel()
                with suppress(asyncio.CancelledError, OSError):
                    await upstream
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for writer in (client_w, server_w):
                if writer is not None:
                    writer.close()
            self._tasks.discard(task)

    async def _pump_client(self, reader: asyncio.StreamReader, link: _Link) -> None:
        # Startup: untyped messages (length, code, ...) until a real startup message.
        while True:
            head = await reader.readexactly(8)
            length, code = struct.unpack("!ii", head)
            body = await reader.readexactly(length - 8)
            if code in (_SSL_REQUEST, _GSSENC_REQUEST):
                link.client.write(b"N")  # no encryption: the messages stay readable
                await link.client.drain()
                continue
            link.server.write(head + body)
            break
        in_transaction, statements = False, 0
        while True:
            kind = await reader.readexactly(1)
            raw_length = await reader.readexactly(4)
            body = await reader.readexactly(struct.unpack("!i", raw_length)[0] - 4)
            message = kind + raw_length + body
            cut = self._cut
            if kind == b"Q":
                query = body.rstrip(b"\0").strip().upper()
                if query.startswith(b"BEGIN"):
                    in_transaction, statements = True, 0
                elif query.startswith(b"COMMIT") and in_transaction:
                    in_transaction = False
                    if cut is not None and cut.commit == "before":
                        self._fire()
                        return
                    if cut is not None and cut.commit == "after":
                        self._fire()
                        link.drop_answers = True
                elif query.startswith(b"ROLLBACK"):
                    in_transaction = False
            elif kind == b"E" and in_transaction:
                statements += 1
                if cut is not None and cut.statement == statements:
                    self._fire()
                    return
            link.server.write(message)
            await link.server.drain()

    async def _pump_server(self, reader: asyncio.StreamReader, link: _Link) -> None:
        while data := await reader.read(65536):
            if link.drop_answers:
                # The COMMIT reached the server and it answered: the transaction is
                # committed. The client never hears of it.
                link.client.close()
                link.server.close()
                return
            link.client.write(data)
            await link.client.drain()
        link.client.close()

    def _fire(self) -> None:
        self._cut, self.fired = None, True


@dataclass
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    drop_answers: bool = False
