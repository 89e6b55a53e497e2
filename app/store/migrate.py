"""Schema migrations from code: `bso migrate`, `bso serve`, /readyz and the tests use these.

The migration scripts ship inside the package (the ``migrations`` package),
so an installed service can migrate without the source tree. Alembic is
imported only when one of these runs: a serving worker that is never asked
for readiness does not carry it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy import text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

import migrations
from app.config import Settings
from app.store.engine import DatabaseFault, autocommit, classify, create_engine

if TYPE_CHECKING:
    from alembic.config import Config

T = TypeVar("T")


def alembic_config(database_url: str | None = None, connection: Connection | None = None) -> Config:
    """An Alembic config for the packaged scripts and, if given, a URL or an open connection."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(Path(migrations.__file__).parent))
    config.attributes["configure_logging"] = False
    if database_url is not None:
        config.attributes["database_url"] = database_url
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@lru_cache
def head_revision() -> str:
    """The newest revision this code knows."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise RuntimeError("no migration scripts found")
    return head


def _current(connection: Connection) -> str | None:
    from alembic.runtime.migration import MigrationContext

    return MigrationContext.configure(connection).get_current_revision()


async def current_revision(engine: AsyncEngine) -> str | None:
    """The revision the database is at (None before the first migration)."""
    async with autocommit(engine) as connection:
        return await connection.run_sync(_current)


@lru_cache
def known_revisions() -> frozenset[str]:
    """Every revision this code ships."""
    from alembic.script import ScriptDirectory

    scripts = ScriptDirectory.from_config(alembic_config())
    return frozenset(script.revision for script in scripts.walk_revisions())


class SchemaState(StrEnum):
    AT_HEAD = "at head"
    BEHIND = "behind"  # empty, or a revision older than head: `bso migrate` is due
    NEWER = "newer"  # a revision this code does not know: a newer release migrated it


@dataclass(frozen=True)
class SchemaCheck:
    """Where the database's schema stands against this code's migrations."""

    current: str | None
    head: str

    @property
    def state(self) -> SchemaState:
        if self.current == self.head:
            return SchemaState.AT_HEAD
        if self.current is None or self.current in known_revisions():
            return SchemaState.BEHIND
        return SchemaState.NEWER

    @property
    def serves(self) -> bool:
        """Whether this code may serve on it.

        A newer schema serves: every migration keeps the previous release
        working (expand, then contract a release later; docs/upgrades.md), so
        old pods stay ready while a rolling upgrade replaces them.
        """
        return self.state is not SchemaState.BEHIND

    def describe(self) -> str:
        if self.state is SchemaState.AT_HEAD:
            return f"schema at {self.head}"
        if self.state is SchemaState.NEWER:
            return (
                f"schema at {self.current}, newer than this release's {self.head} "
                "(a newer release migrated it; this one keeps working on it)"
            )
        return (
            f"schema at revision {self.current or 'none (empty database)'}, not at "
            f"{self.head}: run `bso migrate`"
        )


async def check_schema(engine: AsyncEngine) -> SchemaCheck:
    """Read the database's revision (raises what the driver raises when unreachable)."""
    return SchemaCheck(await current_revision(engine), head_revision())


@dataclass(frozen=True)
class Upgrade:
    """What an upgrade did: ``before`` is None for an empty database."""

    before: str | None
    after: str | None

    def describe(self) -> str:
        if self.before == self.after:
            return f"Database schema already at {self.after}."
        return f"Database schema upgraded from {self.before or 'empty'} to {self.after}."


def _on_own_thread(work: Callable[[], T]) -> T:
    """Run ``work`` on a helper thread.

    It runs its own event loop, which cannot start inside a running one (an
    async test, say).
    """
    results: list[T] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            results.append(work())
        except BaseException as exc:  # re-raised in the caller's thread
            errors.append(exc)

    thread = threading.Thread(target=run, name="alembic-upgrade")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return results[0]


# The key of the PostgreSQL advisory lock every upgrade takes ("bsomig").
MIGRATION_LOCK_KEY = 0x62736F6D6967


class MigrationError(Exception):
    """An upgrade that failed; the message is one line: what failed and what to do."""


async def _take_migration_lock(connection: AsyncConnection, on_wait: Callable[[], None]) -> None:
    """Serialise upgrades of one PostgreSQL database, until the connection closes.

    Concurrent upgrades (a migration Job retried, one per replica) would
    otherwise each create ``alembic_version`` or run the same DDL, and all but
    one fail on a duplicate key. A session lock, not a transaction's: the
    migrations commit their own transaction (and may run a block outside one,
    e.g. CREATE INDEX CONCURRENTLY). Polled rather than waited for, so that
    the connection's lock_timeout still bounds the DDL and the waiting run can
    say once that it waits.
    """
    if connection.dialect.name != "postgresql":
        return  # SQLite: BEGIN IMMEDIATE serialises the migrations' transactions
    statement = text("SELECT pg_try_advisory_lock(:key)")
    waited = False
    while not (await connection.execute(statement, {"key": MIGRATION_LOCK_KEY})).scalar_one():
        await connection.commit()
        if not waited:
            on_wait()
            waited = True
        await asyncio.sleep(0.5)
    await connection.commit()  # the lock outlives the statement's transaction


def _upgrade_on(connection: Connection) -> Upgrade:
    from alembic import command

    before = _current(connection)
    connection.commit()  # Alembic runs the migrations in a transaction of its own
    command.upgrade(alembic_config(connection=connection), "head")
    after = _current(connection)
    connection.commit()
    return Upgrade(before, after)


async def _upgrade(url: str, on_wait: Callable[[], None]) -> Upgrade:
    # The revision before is read under the lock: a run that waited sees what its
    # predecessor left. All the migrations of one run are one transaction, so a
    # failed one leaves the schema as it was (PostgreSQL and SQLite roll DDL back).
    engine = create_engine(Settings(database_url=url))
    try:
        async with engine.connect() as connection:
            await _take_migration_lock(connection, on_wait)
            return await connection.run_sync(_upgrade_on)
    finally:
        await engine.dispose()  # closes the session: the lock is released


def upgrade_head(
    database_url: str | None = None, *, on_wait: Callable[[], None] = lambda: None
) -> Upgrade:
    """Upgrade the database to the latest revision (the configured one by default).

    Any number may run at once on one database: each waits for the one before
    (``on_wait`` is called once if it has to) and then finds the schema at
    head. Raises :class:`MigrationError` with one line saying what failed.
    """
    url = database_url or Settings().database_url
    try:
        return _on_own_thread(lambda: asyncio.run(_upgrade(url, on_wait)))
    except Exception as exc:
        raise MigrationError(_failure(exc, url)) from exc


def _failure(exc: Exception, url: str) -> str:
    """One line for a failed upgrade: what went wrong, and what to do."""
    where = make_url(url).render_as_string(hide_password=True)
    fault = classify(exc)
    reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = reason[0] if reason else type(exc).__name__
    if fault is DatabaseFault.UNAVAILABLE:
        return (
            f"cannot reach the database at {where} ({type(exc).__name__}: {first}); "
            "check BSO_DATABASE_URL and that the database is up, then run `bso migrate` again"
        )
    if fault is DatabaseFault.BUSY:
        return (
            f"a table lock was not free within BSO_LOCK_TIMEOUT_MS ({first}); nothing was "
            "changed: run `bso migrate` again (requests or another session held the table)"
        )
    if isinstance(exc, sa_exc.DBAPIError):
        return (
            f"a migration failed on {where}: {first}; the schema was left as it was "
            "(rolled back): fix the cause, then run `bso migrate` again"
        )
    return f"{type(exc).__name__}: {first}; the schema was left as it was (rolled back)"


async def upgrade_in_place(engine: AsyncEngine) -> None:
    """Migrate through the engine's own connection.

    An in-memory SQLite database exists only there.
    """
    from alembic import command

    def upgrade(connection: Connection) -> None:
        command.upgrade(alembic_config(connection=connection), "head")

    async with engine.begin() as connection:
        await connection.run_sync(upgrade)
