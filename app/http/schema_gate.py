"""The API waits for the schema: 503 until the database is migrated, free once it is.

A server started on a database that `bso migrate` has not brought to this
release's revision (a replica that starts before the migration Job ends, an
operator who forgot) would answer every call with 500. Each process keeps
instead whether its database's schema serves (:class:`SchemaGate`), and
:class:`RequireSchema` answers the API 503 with ``Retry-After`` and a message
naming `bso migrate` while it does not. Once it does, a request pays one
attribute read: no round trip. While it does not, requests read the revision
again at most once per ``recheck_s`` for the whole process, and /readyz reads
it on every probe, so a replica becomes ready by itself when the migration
ends. A statement that fails on a missing table or column (the database was
downgraded or replaced) makes the gate read it again too (app/http/error_handlers.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import suppress

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Receive, Scope, Send

from app.store import migrate
from app.store.migrate import SchemaCheck

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 5
# Served whatever the schema: the probes, metrics and docs, which read no table
# (with BSO_AUTH=required /metrics reads the token table: a missing one is 503 too).
_EXEMPT = ("/healthz", "/readyz", "/metrics", "/docs", "/redoc", "/openapi.json", "/static/")


class SchemaGate:
    """Whether this process's database schema serves this release, read rarely."""

    def __init__(self, engine: AsyncEngine, *, recheck_s: float = 1.0) -> None:
        self.serving = False  # read by every request: the only hot-path cost
        self.last: SchemaCheck | None = None
        self.unreachable = False  # the last read failed: the database, not the schema
        self._engine = engine
        self._recheck_s = recheck_s
        self._read_at = float("-inf")
        self._lock = asyncio.Lock()

    async def refresh(self) -> SchemaCheck:
        """Read the revision now; raises what the driver raises when unreachable."""
        self._read_at = time.monotonic()
        try:
            check = await migrate.check_schema(self._engine)
        except BaseException:
            self.unreachable = True
            raise
        self.unreachable = False
        self._record(check)
        return check

    def _record(self, check: SchemaCheck) -> None:
        if check.serves and not self.serving and self.last is not None:
            logger.info("database %s: serving the API", check.describe())
        elif not check.serves and self.serving:
            logger.warning("database %s; the API answers 503 until then", check.describe())
        self.serving = check.serves
        self.last = check

    async def recheck(self) -> bool:
        """Whether it serves, reading the revision if the last read is old enough.

        Concurrent requests share one read; a failed read counts as a read.
        """
        async with self._lock:
            if time.monotonic() - self._read_at >= self._recheck_s:
                with suppress(Exception):  # unreachable is an answer too
                    await self.refresh()
        return self.serving

    def forget(self) -> None:
        """A statement found a table or column missing: read the revision on the next request."""
        self.serving = False
        self._read_at = float("-inf")

    def message(self) -> str:
        """Why the API does not serve (the schema is behind), for the 503's body."""
        if self.last is None:
            return "The database is unavailable; retry shortly."
        return (
            f"The database schema is not at this release's revision yet ({self.last.describe()}): "
            "the service answers once `bso migrate` has run; retry shortly."
        )


async def log_schema_at_startup(gate: SchemaGate) -> None:
    """One line at startup: where the schema stands, and what the API does about it."""
    try:
        check = await gate.refresh()
    except Exception as exc:  # logged; requests read it again later
        logger.warning(
            "database unreachable at startup (%s): the API answers 503 until it is reachable "
            "and its schema is at %s",
            type(exc).__name__,
            migrate.head_revision(),
        )
        return
    if check.serves:
        logger.info("database %s", check.describe())
    else:
        logger.warning(
            "database %s; the API answers 503 (/readyz too) until the schema is at head",
            check.describe(),
        )


class RequireSchema:
    """Answer the API 503 while the schema is behind; probes and docs pass."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gate: SchemaGate | None = (
            getattr(scope["app"].state, "schema", None) if scope["type"] == "http" else None
        )
        if (
            gate is None
            or gate.serving
            or scope["path"].startswith(_EXEMPT)
            or await gate.recheck()
            # Unreachable: the request finds out itself, and is answered as any
            # request on a database outage (503, app/http/error_handlers.py).
            or gate.unreachable
        ):
            await self.app(scope, receive, send)
            return
        await send_unavailable(send, gate.message())


async def send_unavailable(send: Send, message: str) -> None:
    """503 with Retry-After and a JSON message."""
    body = json.dumps({"message": message}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"retry-after", str(RETRY_AFTER_S).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
