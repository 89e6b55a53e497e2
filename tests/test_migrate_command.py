"""`bso migrate` as a migration Job runs it: several at once, and failing clearly.

Concurrent runs on one fresh PostgreSQL database take turns on an advisory
lock: each exits 0, one upgrades, the others find the schema at head. A
migration that fails prints one line saying what failed and what to do, and
leaves the schema where it was.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Connection

from app.config import Settings
from app.store.engine import create_engine
from app.store.migrate import alembic_config, current_revision, head_revision
from tests.support.server import (
    bso_args,
    clean_env,
    drop_postgres_database,
    fresh_postgres_database,
    worker_name,
)

RUNS = 3


@pytest.fixture
def fresh_postgres(testrun_uid: str) -> Iterator[str]:
    name = f"bso_migcmd_{testrun_uid[:12]}_{worker_name()}"
    yield fresh_postgres_database(name)
    drop_postgres_database(name)


async def revision_of(url: str) -> str | None:
    engine = create_engine(Settings(database_url=url))
    try:
        return await current_revision(engine)
    finally:
        await engine.dispose()


def migrate_at_once(url: str, cwd: Path, runs: int) -> list[tuple[int, str, str]]:
    """Start ``runs`` `bso migrate` together; (exit status, stdout, stderr) of each."""
    env = clean_env(BSO_DATABASE_URL=url)
    pipe = subprocess.PIPE
    processes = [
        subprocess.Popen(bso_args("migrate"), env=env, cwd=cwd, stdout=pipe, stderr=pipe, text=True)
        for _ in range(runs)
    ]
    results = []
    for process in processes:
        out, err = process.communicate(timeout=120)
        results.append((process.returncode, out, err))
    return results


async def test_concurrent_migrations_all_exit_0_and_exactly_one_upgrades(
    fresh_postgres: str, tmp_path: Path
) -> None:
    results = await asyncio.to_thread(migrate_at_once, fresh_postgres, tmp_path, RUNS)
    head = head_revision()
    for status, out, err in results:
        assert status == 0, (out, err)
        assert "Traceback" not in err, err
    outputs = sorted(out for _, out, _ in results)
    assert outputs == sorted(
        [f"Database schema upgraded from empty to {head}.\n"]
        + [f"Database schema already at {head}.\n"] * (RUNS - 1)
    ), results
    assert await revision_of(fresh_postgres) == head


async def test_a_failed_migration_prints_one_line_and_leaves_the_schema_as_it_was(
    fresh_postgres: str, tmp_path: Path
) -> None:
    # The tokens migration creates table "token": one that is already there breaks it.
    before = "7d3a9c2e4b10"
    await asyncio.to_thread(command.upgrade, alembic_config(fresh_postgres), before)

    def squat(connection: Connection) -> None:
        connection.exec_driver_sql("CREATE TABLE token (squatter integer)")
        connection.commit()

    engine = create_engine(Settings(database_url=fresh_postgres))
    try:
        async with engine.connect() as connection:
            await connection.run_sync(squat)
    finally:
        await engine.dispose()

    result = await asyncio.to_thread(
        subprocess.run,
        bso_args("migrate"),
        env=clean_env(BSO_DATABASE_URL=fresh_postgres),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1, result
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith("Migration failed: a migration failed on postgresql"), line
    assert 'relation "token" already exists' in line and "run `bso migrate` again" in line
    assert "rolled back" in line and result.stdout == ""
    assert await revision_of(fresh_postgres) == before  # nothing of it stayed


def test_an_unreachable_database_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    url = "postgresql://postgres:secret@127.0.0.1:1/nowhere"
    result = subprocess.run(
        bso_args("migrate"),
        env=clean_env(BSO_DATABASE_URL=url),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("Migration failed: cannot reach the database at"), line
    assert "BSO_DATABASE_URL" in line and "secret" not in line
