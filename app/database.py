"""Connections at the speed of the driver: asyncpg for PostgreSQL, aiosqlite for SQLite.

The request path speaks SQL straight to the driver: SQLAlchemy's ORM cost
about 3 ms of CPU per request here, the driver about 0.1 ms
(docs/benchmarks.md). SQLAlchemy still defines the schema (models.py) and
drives Alembic. Both backends take the same SQL text with numbered ``$n``
parameters; the SQLite adapter rewrites them and drops row-lock clauses,
since BEGIN IMMEDIATE already serialises writers there.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import aiosqlite
import asyncpg

from app.config import Settings

Row = Mapping[str, Any]
sql_logger = logging.getLogger("app.sql")


def _echo(sql: str, args: Any) -> None:
    sql_logger.info("%s %r", sql, args)


class Connection(ABC):
    """The few calls the repository needs, identical on both databases."""

    @abstractmethod
    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    @abstractmethod
    async def execute(self, sql: str, *args: Any) -> int:
        """Run a statement; return the number of rows it changed."""

    @abstractmethod
    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        rows = await self.fetch(sql, *args)
        return rows[0] if rows else None

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = await self.fetchrow(sql, *args)
        return None if row is None else next(iter(row.values()))


class Database(ABC):
    """A pool of connections; each use case runs in one ``transaction``."""

    dialect: str

    @abstractmethod
    def transaction(self) -> Any:
        """An async context manager: one transaction that commits on success."""

    @abstractmethod
    def autocommit(self) -> Any:
        """An async context manager: a connection whose statements commit alone."""

    @abstractmethod
    async def close(self) -> None: ...


# ------------------------------------------------------------- PostgreSQL


class _PgConnection(Connection):
    def __init__(self, raw: asyncpg.Connection, echo: bool) -> None:
        self.raw = raw
        self.echo = echo

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        if self.echo:
            _echo(sql, args)
        return await self.raw.fetch(sql, *args)  # type: ignore[no-any-return]

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        if self.echo:
            _echo(sql, args)
        return await self.raw.fetchrow(sql, *args)  # type: ignore[no-any-return]

    async def fetchval(self, sql: str, *args: Any) -> Any:
        if self.echo:
            _echo(sql, args)
        return await self.raw.fetchval(sql, *args)

    async def execute(self, sql: str, *args: Any) -> int:
        if self.echo:
            _echo(sql, args)
        status: str = await self.raw.execute(sql, *args)
        tail = status.rsplit(" ", 1)[-1]
        return int(tail) if tail.isdigit() else 0

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.echo:
            _echo(sql, rows)
        await self.raw.executemany(sql, rows)


class _PooledPgConnection(asyncpg.Connection):  # type: ignore[misc]
    """Skips the reset query that asyncpg sends on every release to the pool.

    We set no session state (no SET, LISTEN, cursors or advisory locks), so
    that query was a wasted round trip per request; asyncpg still rolls back
    a transaction left open by a cancelled request.
    """

    def get_reset_query(self) -> str:
        return ""


class PostgresDatabase(Database):
    dialect = "postgresql"

    def __init__(self, pool: asyncpg.Pool, echo: bool = False) -> None:
        self.pool = pool
        self.echo = echo

    @classmethod
    async def connect(cls, settings: Settings) -> PostgresDatabase:
        pool = await asyncpg.create_pool(
            settings.postgres_dsn,
            # Connect lazily: the service starts while the database is down
            # (/healthz answers, /readyz says why it is not ready).
            min_size=0,
            connection_class=_PooledPgConnection,
            max_size=settings.pool_size,
            # A request stuck behind another's lock on the same job fails
            # fast (answered 503) instead of hanging.
            server_settings={"lock_timeout": str(settings.lock_timeout_ms)},
        )
        return cls(pool, settings.echo_sql)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self.pool.acquire() as raw, raw.transaction():
            yield _PgConnection(raw, self.echo)

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[Connection]:
        async with self.pool.acquire() as raw:
            yield _PgConnection(raw, self.echo)

    async def close(self) -> None:
        await self.pool.close()


# ----------------------------------------------------------------- SQLite

_PARAM = re.compile(r"\$(\d+)")
_ROW_LOCK = re.compile(r"\s+FOR UPDATE(\s+OF\s+\w+)?", re.IGNORECASE)


def _to_sqlite(sql: str) -> str:
    return _PARAM.sub(r"?\1", _ROW_LOCK.sub("", sql))


def ensure_sqlite_directory(settings: Settings) -> str:
    """Create the folder of a SQLite file (./data by default); return the file's path."""
    path = settings.sqlite_path
    if path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    return path


def _bind(value: Any) -> Any:
    # Timestamps are stored as ISO 8601 text in UTC; they compare as text.
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    return value


class _SqliteConnection(Connection):
    _translated: dict[str, str] = {}

    def __init__(self, raw: aiosqlite.Connection, echo: bool) -> None:
        self.raw = raw
        self.echo = echo

    def _sql(self, sql: str) -> str:
        translated = self._translated.get(sql)
        if translated is None:
            translated = self._translated[sql] = _to_sqlite(sql)
        if self.echo:
            sql_logger.info("%s", translated)
        return translated

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        cursor = await self.raw.execute(self._sql(sql), [_bind(a) for a in args])
        rows = await cursor.fetchall()
        await cursor.close()
        return [dict(zip(r.keys(), tuple(r), strict=True)) for r in rows]

    async def execute(self, sql: str, *args: Any) -> int:
        cursor = await self.raw.execute(self._sql(sql), [_bind(a) for a in args])
        count = cursor.rowcount
        await cursor.close()
        return max(count, 0)

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        await self.raw.executemany(self._sql(sql), [[_bind(a) for a in r] for r in rows])


class SqliteDatabase(Database):
    """A few connections to one file; writers queue on SQLite's own lock."""

    dialect = "sqlite"

    def __init__(self, path: str, busy_timeout_ms: int, size: int = 4, echo: bool = False) -> None:
        self.path = path
        self.echo = echo
        self.busy_timeout_ms = busy_timeout_ms
        self.size = size
        self._idle: asyncio.LifoQueue[aiosqlite.Connection] = asyncio.LifoQueue()
        self._all: list[aiosqlite.Connection] = []
        self._opening = asyncio.Lock()

    @classmethod
    async def connect(cls, settings: Settings) -> SqliteDatabase:
        path = ensure_sqlite_directory(settings)
        return cls(path, settings.lock_timeout_ms, echo=settings.echo_sql)

    async def _open(self) -> aiosqlite.Connection:
        raw = await aiosqlite.connect(
            self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None
        )
        raw.row_factory = sqlite3.Row
        for pragma in (
            "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={int(self.busy_timeout_ms)}",
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=NORMAL",
        ):
            await raw.execute(pragma)
        return raw

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiosqlite.Connection]:
        if self._idle.empty() and len(self._all) < self.size:
            async with self._opening:
                if len(self._all) < self.size:
                    raw = await self._open()
                    self._all.append(raw)
                    self._idle.put_nowait(raw)
        raw = await self._idle.get()
        try:
            yield raw
        finally:
            self._idle.put_nowait(raw)

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with self._connection() as raw:
            # IMMEDIATE: take the write lock up front, so that a second writer
            # waits on the busy timeout instead of failing half-way.
            await raw.execute("BEGIN IMMEDIATE")
            try:
                yield _SqliteConnection(raw, self.echo)
                await raw.execute("COMMIT")
            except BaseException:
                if raw.in_transaction:
                    await raw.execute("ROLLBACK")
                raise

    @asynccontextmanager
    async def autocommit(self) -> AsyncIterator[Connection]:
        async with self._connection() as raw:
            yield _SqliteConnection(raw, self.echo)

    async def close(self) -> None:
        for raw in self._all:
            await raw.close()
        self._all.clear()


async def open_database(settings: Settings) -> Database:
    """Connect to the configured database."""
    if settings.is_sqlite:
        return await SqliteDatabase.connect(settings)
    return await PostgresDatabase.connect(settings)
