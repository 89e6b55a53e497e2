"""The source URL forms docs/zeus-import.md lists, each read for real, and SQLite read-only.

`mysql://` and `mariadb://` (read with aiomysql) on MariaDB, and
`postgresql+asyncpg://` on PostgreSQL, each holding Zeus's schema as Zeus's
own code makes it (tests/zeus_server/run.py) and one job as Zeus stores it;
a SQLite source is opened read-only: a write through the importer's own URL
is refused by SQLite itself, and the file is left byte for byte as it was.
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Boolean, Connection, MetaData, Table, insert, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.zeus_import.source import source_url
from tests.conftest import RUN_ID
from tests.support.server import drop_postgres_database, fresh_postgres_database, worker_name
from tests.support.zeus_server import (
    create_zeus_schema,
    drop_mariadb_database,
    fresh_mariadb_database,
    import_zeus,
)
from tests.zeus_import.test_bad_sources import GOOD_TRIALS, add_job, zeus_template  # noqa: F401

IMPORTED = "imported job 'team-1': 2 batch sizes, 2 trials"


def _name(kind: str) -> str:
    return f"bso_test_zeusform_{kind}_{RUN_ID}_{worker_name()}"


def reflect(connection: Connection, name: str) -> Table:
    return Table(name, MetaData(), autoload_with=connection)


def copy_rows(sqlite_source: Path, url: str) -> None:
    """The SQLite source's rows (written as Zeus writes them) into another Zeus database."""

    async def copy() -> None:
        source = create_async_engine(f"sqlite+aiosqlite:///{sqlite_source}", poolclass=NullPool)
        target = create_async_engine(url, poolclass=NullPool)
        try:
            async with source.connect() as read, target.begin() as write:
                for name in ("Job", "BatchSize", "Trial"):
                    # Each side's own table, reflected: typed values (booleans, datetimes).
                    mine = await read.run_sync(reflect, name)
                    theirs = await write.run_sync(reflect, name)
                    rows = [dict(r._mapping) for r in await read.execute(select(mine))]
                    for row in rows:
                        for column in theirs.c:
                            if isinstance(column.type, Boolean) and row[column.name] is not None:
                                row[column.name] = bool(row[column.name])
                    await write.execute(insert(theirs), rows)
        finally:
            await source.dispose()
            await target.dispose()

    asyncio.run(copy())


@pytest.fixture
def one_job(zeus_template: Path, tmp_path: Path) -> Path:  # noqa: F811
    path = Path(shutil.copy(zeus_template, tmp_path / "zeus.db"))
    add_job(path, "team-1", trials=GOOD_TRIALS)
    return path


@pytest.fixture(params=["mysql://", "mariadb://"])
def mariadb_source(request: pytest.FixtureRequest, one_job: Path) -> Iterator[str]:
    url = fresh_mariadb_database(_name("my"))
    create_zeus_schema(url)
    copy_rows(one_job, url)
    yield url.replace("mysql+aiomysql://", str(request.param))
    drop_mariadb_database(_name("my"))


@pytest.fixture
def postgres_source(one_job: Path) -> Iterator[str]:
    url = fresh_postgres_database(_name("pg"))
    create_zeus_schema(url)
    copy_rows(one_job, url)
    assert url.startswith("postgresql+asyncpg://")
    yield url
    drop_postgres_database(_name("pg"))


def test_mysql_and_mariadb_urls_are_read(mariadb_source: str, tmp_path: Path) -> None:
    ((status, out, err),) = import_zeus(mariadb_source, f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    assert status == 0, err
    assert IMPORTED in out, out


def test_a_postgresql_asyncpg_url_is_read(postgres_source: str, tmp_path: Path) -> None:
    ((status, out, err),) = import_zeus(postgres_source, f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    assert status == 0, err
    assert IMPORTED in out, out


def test_a_sqlite_source_is_opened_read_only(one_job: Path, tmp_path: Path) -> None:
    before = hashlib.sha256(one_job.read_bytes()).hexdigest()
    ((status, out, err),) = import_zeus(
        f"sqlite:///{one_job}", f"sqlite+aiosqlite:///{tmp_path / 'b.db'}"
    )
    assert status == 0, err
    assert IMPORTED in out, out
    assert hashlib.sha256(one_job.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in one_job.parent.iterdir() if p.name.startswith("zeus")) == [
        "zeus.db"
    ]  # no journal or WAL file was made beside it

    async def write_through_the_importers_url() -> None:
        engine = create_async_engine(source_url(f"sqlite:///{one_job}"), poolclass=NullPool)
        try:
            async with engine.begin() as conn:
                await conn.execute(text('DELETE FROM "Trial"'))
        finally:
            await engine.dispose()

    with pytest.raises(OperationalError, match="readonly database"):
        asyncio.run(write_through_the_importers_url())
    assert hashlib.sha256(one_job.read_bytes()).hexdigest() == before
