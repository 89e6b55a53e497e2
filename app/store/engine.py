"""The engine, and everything that differs between PostgreSQL and SQLite.

One ``AsyncEngine`` per process, built here for the app's lifespan and for
Alembic alike. Writers run in ``engine.begin()``: PostgreSQL serialises them
per job with ``SELECT ... FOR UPDATE`` (the repository asks for it), SQLite
with ``BEGIN IMMEDIATE`` (emitted here; SQLite has no row locks). Lock-free
reads run on a connection whose statements each commit alone
(:func:`lock_free`, :func:`autocommit`), saving the BEGIN/COMMIT round trips.

A use case runs as one synchronous function (:func:`in_transaction`,
:func:`lock_free`) that checks a connection out, runs its statements and
returns the connection to the pool, all in one greenlet: a request pays one
switch into SQLAlchemy's synchronous core, not one per statement, BEGIN,
COMMIT, checkout and checkin. A lock-free read that finds it must write goes
on, on the same connection, in a transaction (:func:`begin_writing`): one
pool checkout per request.

Database errors are classified here too (:func:`classify`), so that the HTTP
layer answers a busy or unreachable database with 503 without knowing drivers.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import StrEnum
from typing import Any, Concatenate, ParamSpec, TypeVar

import asyncpg
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine
from sqlalchemy.pool import AsyncAdaptedQueuePool
from sqlalchemy.util import greenlet_spawn

from app.config import Settings

# SQLite: a connection tagged with this option runs its statements without
# BEGIN IMMEDIATE (see _sqlite_engine).
_LOCK_FREE = "bso_lock_free"
_AUTOCOMMIT: dict[str, dict[str, Any]] = {
    "postgresql": {"isolation_level": "AUTOCOMMIT"},
    "sqlite": {_LOCK_FREE: True},
}


def create_engine(settings: Settings) -> AsyncEngine:
    """The engine for the configured database (connections open lazily)."""
    if settings.is_sqlite:
        return _sqlite_engine(settings)
    return create_async_engine(
        settings.database_url,
        echo=settings.echo_sql,
        pool_size=settings.pool_size,
        max_overflow=0,
        # Waiting for a free pooled connection counts as "busy" (503) too.
        pool_timeout=settings.lock_timeout_ms / 1000,
        # A request stuck behind another's lock on the same job fails fast
        # (answered 503) instead of hanging.
        connect_args={"server_settings": {"lock_timeout": str(settings.lock_timeout_ms)}},
    )


def _sqlite_engine(settings: Settings) -> AsyncEngine:
    path = settings.sqlite_path
    memory = path == ":memory:"
    if not memory:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    engine = create_async_engine(
        settings.database_url,
        echo=settings.echo_sql,
        # Every connection to ":memory:" is a database of its own: keep one
        # connection for the life of the engine, and let requests take turns.
        poolclass=AsyncAdaptedQueuePool,
        pool_size=1 if memory else 4,
        max_overflow=0,
        pool_timeout=settings.lock_timeout_ms / 1000,
        connect_args={"timeout": settings.lock_timeout_ms / 1000},
    )
    pragmas = [
        "PRAGMA foreign_keys=ON",
        f"PRAGMA busy_timeout={int(settings.lock_timeout_ms)}",
    ]
    if not memory:
        pragmas += ["PRAGMA journal_mode=WAL", "PRAGMA synchronous=NORMAL"]

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # The driver's own transaction handling off: we emit BEGIN ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        for pragma in pragmas:
            cursor.execute(pragma)
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Connection) -> None:
        if connection.get_execution_options().get(_LOCK_FREE):
            return
        # IMMEDIATE: take the write lock up front, so that a second writer
        # waits on the busy timeout instead of failing half-way.
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


P = ParamSpec("P")
T = TypeVar("T")


@asynccontextmanager
async def autocommit(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection for lock-free reads: each statement commits alone.

    ``async with autocommit(engine) as connection: ...``. The option is set
    on the connection (see :func:`_lock_free`), not through an option engine.
    """
    async with engine.connect() as conn:
        await conn.execution_options(**_AUTOCOMMIT[engine.dialect.name])
        yield conn


async def in_transaction(
    engine: AsyncEngine,
    fn: Callable[Concatenate[Connection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """``fn(connection, *args, **kwargs)`` in one transaction, in one greenlet.

    Commits when ``fn`` returns, rolls back when it raises. SQLite's writers
    begin with BEGIN IMMEDIATE, as every ``engine.begin()`` here.
    """
    return await greenlet_spawn(_transaction, engine.sync_engine, fn, args, kwargs)


def _transaction(
    engine: Engine,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T:
    # Checked out and returned in this greenlet (see the note above _lock_free).
    with engine.connect() as conn, conn.begin():
        return fn(conn, *args, **kwargs)


async def lock_free(
    engine: AsyncEngine,
    fn: Callable[Concatenate[Connection, P], T],
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """``fn(connection, *args, **kwargs)`` on a lock-free connection, in one greenlet.

    Each statement commits alone, unless ``fn`` calls :func:`begin_writing`.
    """
    return await greenlet_spawn(_lock_free, engine.sync_engine, fn, args, kwargs)


# Both run the synchronous engine in a greenlet of their own through
# greenlet_spawn, the function that AsyncEngine.connect and
# AsyncConnection.run_sync each call (sqlalchemy.util exports it; the docs
# do not describe it): the checkout, the use case and the checkin in one
# greenlet, instead of one for the checkout (with an AsyncConnection
# around it) and one for the rest, which cost some 54k instructions, 2.5%
# of a hot-loop request (docs/benchmarks.md, issue 24). Nor does the
# connection go back in AsyncConnection.__aexit__ (one more switch, and a
# task that shields the close from cancellation). A cancellation reaches
# the greenlet as an exception at its current await (the checkout or a
# statement), so a connection checked out is always returned.


def _lock_free(
    engine: Engine,
    fn: Callable[..., T],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> T:
    # The option is set on the connection, not through an option engine
    # (engine.execution_options), whose joined event dispatch cost some 50 us
    # more; the pool resets the isolation level when the connection returns.
    with engine.connect() as conn:
        conn.execution_options(**_AUTOCOMMIT[conn.dialect.name])
        return fn(conn, *args, **kwargs)


def begin_writing(conn: Connection) -> None:
    """Turn a lock-free connection (:func:`lock_free`) into a writer's; then ``conn.begin()``.

    What its lock-free reads began (nothing on the server) ends first. The
    pool restores the connection's settings when it is returned.
    """
    if conn.in_transaction():
        conn.commit()
    if conn.dialect.name == "sqlite":
        conn.execution_options(**{_LOCK_FREE: False})
    else:
        conn.execution_options(isolation_level=conn.default_isolation_level)


# ------------------------------------------------------------------ faults


class DatabaseFault(StrEnum):
    """Why a request could not be served by the database; both are worth a retry."""

    BUSY = "busy"  # a lock or a pooled connection was not free in time
    UNAVAILABLE = "unavailable"  # unreachable, restarting, out of connections


# Exceptions that may carry a database fault: SQLAlchemy wraps what the
# drivers raise during statements, but not every error of a new connection.
DATABASE_ERRORS: tuple[type[Exception], ...] = (
    sa_exc.DBAPIError,
    sa_exc.TimeoutError,
    OSError,
    asyncio.TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
)

_BUSY_SQLSTATES = {
    "55P03",  # lock_not_available: lock_timeout expired
    "40001",  # serialization_failure
    "40P01",  # deadlock_detected
}
_UNAVAILABLE_SQLSTATES = {
    "57P01",  # admin_shutdown (pg_terminate_backend, a restart)
    "57P02",  # crash_shutdown
    "57P03",  # cannot_connect_now (starting up)
    "53300",  # too_many_connections
    "53400",  # configuration_limit_exceeded
}
_SQLITE_BUSY, _SQLITE_LOCKED = 5, 6


def classify(exc: BaseException) -> DatabaseFault | None:
    """The fault behind a database error, or None for a bug (answered 500)."""
    if isinstance(exc, sa_exc.TimeoutError):
        return DatabaseFault.BUSY  # no pooled connection came free in time
    if isinstance(exc, sa_exc.DBAPIError):
        if exc.connection_invalidated or isinstance(exc, sa_exc.InterfaceError):
            return DatabaseFault.UNAVAILABLE
        return _classify_driver_error(exc.orig) or (
            DatabaseFault.UNAVAILABLE if isinstance(exc.orig, OSError) else None
        )
    if isinstance(exc, OSError | asyncio.TimeoutError | asyncpg.InterfaceError):
        return DatabaseFault.UNAVAILABLE  # refused, reset, or timed out connecting
    return _classify_driver_error(exc)


def _classify_driver_error(error: BaseException | None) -> DatabaseFault | None:
    sqlstate = str(getattr(error, "sqlstate", None) or "")
    if sqlstate in _BUSY_SQLSTATES:
        return DatabaseFault.BUSY
    if sqlstate in _UNAVAILABLE_SQLSTATES or sqlstate.startswith("08"):  # 08: connection
        return DatabaseFault.UNAVAILABLE
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None and code & 0xFF in (_SQLITE_BUSY, _SQLITE_LOCKED):
        return DatabaseFault.BUSY
    return None


_MISSING_SCHEMA_SQLSTATES = {
    "42P01",  # undefined_table
    "42703",  # undefined_column
}


def is_missing_schema(exc: BaseException) -> bool:
    """A statement named a table or column the database lacks: not migrated, or a bug."""
    error = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    if str(getattr(error, "sqlstate", None) or "") in _MISSING_SCHEMA_SQLSTATES:
        return True
    if getattr(error, "sqlite_errorcode", None) is not None or "sqlite" in type(error).__module__:
        return str(error).startswith(("no such table", "no such column"))
    return False
