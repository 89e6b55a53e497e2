"""A migration's DDL waits at most BSO_LOCK_TIMEOUT_MS for a table lock (docs/upgrades.md).

A request holding a job's row lock must not let `bso migrate` queue its
ALTER TABLE behind it (and every later request behind the ALTER): the
migration fails with one line, changes nothing, and succeeds when run again
once the lock is free. No timed bound: the holder keeps its lock until the
migration has returned, so a DDL that waited for it would hang (and fail at
the subprocess's timeout).
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.store.migrate import alembic_config, head_revision
from tests.support.server import (
    bso_args,
    clean_env,
    drop_postgres_database,
    fresh_postgres_database,
    worker_name,
)
from tests.test_migrate_command import revision_of

LOCK_TIMEOUT_MS = 500


@pytest.fixture
def before_head(testrun_uid: str) -> Iterator[str]:
    """An empty PostgreSQL database."""
    name = f"bso_miglock_{testrun_uid[:12]}_{worker_name()}"
    yield fresh_postgres_database(name)
    drop_postgres_database(name)


def migrate(url: str, cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = clean_env(BSO_DATABASE_URL=url, BSO_LOCK_TIMEOUT_MS=str(LOCK_TIMEOUT_MS))
    started = time.monotonic()
    done = subprocess.run(
        bso_args("migrate"), env=env, cwd=cwd, capture_output=True, text=True, timeout=120
    )
    return done, time.monotonic() - started


async def test_a_held_row_lock_fails_the_migration_fast_and_changes_nothing(
    before_head: str, tmp_path: Path
) -> None:
    # At the revision before the newest (whichever table it alters: a dispatch locks both).
    newest = ScriptDirectory.from_config(alembic_config()).get_revision("head")
    assert newest is not None and isinstance(newest.down_revision, str)
    await asyncio.to_thread(command.upgrade, alembic_config(before_head), newest.down_revision)
    before = await revision_of(before_head)
    assert before == newest.down_revision
    engine = create_async_engine(before_head, poolclass=NullPool)
    try:
        async with engine.connect() as holder:
            # What a dispatch's SELECT ... FOR UPDATE of a job row and its trial's INSERT
            # take, held until the migration has returned: a DDL that waited for either
            # would never return.
            await holder.execute(text("LOCK TABLE job IN ROW SHARE MODE"))
            await holder.execute(text("LOCK TABLE trial IN ROW EXCLUSIVE MODE"))
            done, seconds = await asyncio.to_thread(migrate, before_head, tmp_path)
            await holder.rollback()
    finally:
        await engine.dispose()
    print(f"bso migrate gave up after {seconds:.1f} s")
    assert done.returncode == 1, (done.stdout, done.stderr)
    (line,) = done.stderr.splitlines()
    assert line.startswith("Migration failed: a table lock was not free within BSO_LOCK_TIMEOUT_MS")
    assert "run `bso migrate` again" in line
    assert await revision_of(before_head) == before  # rolled back: nothing of it stayed

    again, _ = await asyncio.to_thread(migrate, before_head, tmp_path)
    assert again.returncode == 0, again.stderr
    assert await revision_of(before_head) == head_revision()
