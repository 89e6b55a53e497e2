"""Fixtures: one PostgreSQL database and one SQLite file per xdist worker.

Migrations run once per database (so every run also tests them); each test
starts from empty tables. DB-backed tests run against both backends through
the parametrised ``database_url`` fixture.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from app.config import Settings
from app.http.app import create_app
from app.store.migrate import upgrade_head
from tests.support.server import drop_postgres_database, fresh_postgres_database, worker_name

# xdist shares one id among the workers of a run; without xdist, make one.
RUN_ID = os.environ.get("PYTEST_XDIST_TESTRUNUID", uuid.uuid4().hex)[:12]


def pytest_configure(config: pytest.Config) -> None:
    """The suite's settings are its own values, none the caller's (test_isolated_settings.py).

    Drops the BSO_/ZEUS_BSO_ variables of the caller's environment (the processes
    the suite starts inherit it) and stops Settings from reading a ``.env`` in the
    working directory, the checkout an operator may have one in for compose.
    BSO_TEST_POSTGRES_URL stays: it is the suite's own (tests/support/server.py).
    """
    for name in list(os.environ):
        if name.startswith(("BSO_", "ZEUS_BSO_")) and name != "BSO_TEST_POSTGRES_URL":
            del os.environ[name]
    Settings.model_config["env_file"] = None


# Modules marked "once": scripts/test.sh runs them on the newest Python only
# (-m "not once" on the oldest), because what they check does not run on the
# interpreter under test, or runs there through code the rest of the suite
# covers on both. Everything else runs on both Pythons.
ONCE: dict[str, str] = {
    "tests/test_schemathesis.py": "fuzzes the served OpenAPI document, the same on every Python; "
    "the routes' code runs on both through tests/api",
    "tests/test_k8s.py": "the manifests, and the container's commands (the image's Python is 3.13)",
    "tests/test_deploy.py": "docker-compose.yml and the Dockerfile",
    "tests/test_docs_links.py": "the Markdown files",
    "tests/test_layout.py": "the source's imports and sizes, read as text",
    "tests/test_test_script.py": "scripts/test.sh",
    "tests/test_isolated_settings.py": "the suite's own isolation from the caller's settings",
    "tests/dashboard/test_browser.py": "what Chromium renders; the pages' routes run on both "
    "through tests/dashboard/test_pages.py",
    "tests/zeus_import/test_source_forms.py": "the URL forms of MariaDB, MySQL and PostgreSQL "
    "sources (drivers); the import itself runs on both through the other zeus_import tests",
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    root = Path(str(config.rootpath))
    for item in items:
        if str(item.path.relative_to(root)) in ONCE:
            item.add_marker(pytest.mark.once)


@pytest.fixture(scope="session")
def postgresql_url() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for this worker of this run."""
    # Named per run, so that concurrent runs on one machine never collide.
    name = f"bso_test_{RUN_ID}_{worker_name()}"
    url = fresh_postgres_database(name)
    upgrade_head(url)
    yield url
    drop_postgres_database(name)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A fresh, migrated SQLite file for this worker."""
    path = tmp_path_factory.mktemp("sqlite") / f"bso_{worker_name()}.db"
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


@pytest.fixture(scope="session")
async def auth_app(database_url: str) -> AsyncIterator[FastAPI]:
    """The real app with BSO_AUTH=required, on the same database as ``app``."""
    settings = Settings(database_url=database_url, log_level="WARNING", auth="required")
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture(autouse=True)
async def _clean_tables(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Every DB-backed test starts with empty tables."""
    used = [name for name in ("app", "auth_app") if name in request.fixturenames]
    if not used:
        yield
        return
    application: FastAPI = request.getfixturevalue(used[0])
    engine = application.state.engine
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            await conn.exec_driver_sql(
                "TRUNCATE job, batch_size, trial, arm, token, job_group, group_batch_size"
            )
        else:
            await conn.exec_driver_sql("DELETE FROM job")  # cascades
            await conn.exec_driver_sql("DELETE FROM token")
            await conn.exec_driver_sql("DELETE FROM job_group")  # cascades
    yield


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client over the ASGI app (the real HTTP stack, in process)."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture
async def auth_client(auth_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client over the app with BSO_AUTH=required; it sends no credentials itself."""
    transport = httpx.ASGITransport(app=auth_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
        yield http


@pytest.fixture
def repo_root() -> Iterator[Path]:
    yield Path(__file__).resolve().parent.parent
