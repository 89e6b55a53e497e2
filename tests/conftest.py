"""Fixtures: one PostgreSQL database and one SQLite file per xdist worker.

Migrations run once per database (so every run also tests them); each test
starts from empty tables. DB-backed tests run against both backends through
the parametrised ``database_url`` fixture.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import make_url

from app.config import Settings
from app.main import create_app
from app.migrate import upgrade_head

ADMIN_URL = os.environ.get(
    "BSO_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
T = TypeVar("T")
# xdist shares one id among the workers of a run; without xdist, make one.
RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID", uuid.uuid4().hex)[:12]


def _worker() -> str:
    return os.environ.get("PYTEST_XDIST_WORKER", "main")


async def _admin(*statements: str) -> None:
    url = make_url(ADMIN_URL)
    connection = await asyncpg.connect(
        host=url.host, port=url.port or 5432, user=url.username, password=url.password,
        database=url.database,
    )  # fmt: skip
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def _off_loop(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine on a thread: asyncio.run here would unset pytest-asyncio's loop."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result()


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this worker of this run."""
    # Named per run, so that concurrent runs on one machine never collide.
    name = f"bso_test_{RUN_ID}_{_worker()}"
    _off_loop(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', f'CREATE DATABASE "{name}"'))
    url = make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    upgrade_head(url)
    yield url
    _off_loop(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh, migrated SQLite file for this worker."""
    path = tmp_path_factory.mktemp("sqlite") / f"bso_{_worker()}.db"
    url = f"sqlite+aiosqlite:///{path}"
    upgrade_head(url)
    return url


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each DB-backed test runs once per backend."""
    return str(request.getfixturevalue(f"{request.param}_url"))


@pytest.fixture(scope="session")
async def app(database_url: str) -> AsyncIterator[FastAPI]:
    """The real app with its lifespan (engine and sessionmaker) running."""
    application = create_app(Settings(database_url=database_url, log_level="WARNING"))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(autouse=True)
async def _clean_tables(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Every DB-backed test starts with empty tables."""
    if "app" not in request.fixturenames:
        yield
        return
    application: FastAPI = request.getfixturevalue("app")
    database = application.state.database
    async with database.transaction() as conn:
        if database.dialect == "postgresql":
            await conn.execute("TRUNCATE job, batch_size, trial, arm")
        else:
            await conn.execute("DELETE FROM job")  # cascades
    yield


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client over the ASGI app (the real HTTP stack, in process)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture
def repo_root() -> Iterator[Path]:
    yield Path(__file__).resolve().parent.parent
