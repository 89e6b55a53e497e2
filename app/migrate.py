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
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

import migrations
from app.config import Settings
from app.db import autocommit, create_engine

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

    env.py runs its own event loop, which cannot start inside a running one
    (an async test, say).
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


async def _revision_at(database_url: str) -> str | None:
    engine = create_engine(Settings(database_url=database_url))
    try:
        return await current_revision(engine)
    finally:
        await engine.dispose()


def upgrade_head(database_url: str | None = None) -> Upgrade:
    """Upgrade the database to the latest revision (the configured one by default)."""
    from alembic import command

    url = database_url or Settings().database_url

    def upgrade() -> Upgrade:
        before = asyncio.run(_revision_at(url))
        command.upgrade(alembic_config(url), "head")
        return Upgrade(before, asyncio.run(_revision_at(url)))

    return _on_own_thread(upgrade)


async def upgrade_in_place(engine: AsyncEngine) -> None:
    """Migrate through the engine's own connection.

    An in-memory SQLite database exists only there.
    """
    from alembic import command

    def upgrade(connection: Connection) -> None:
        command.upgrade(alembic_config(connection=connection), "head")

    async with engine.begin() as connection:
        await connection.run_sync(upgrade)
