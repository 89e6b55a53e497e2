"""A database whose schema is not at this release's head: 503 until `bso migrate` ran.

In-process on both databases (the ASGI client of the real app, lifespan
included), and once as operators run it: a `bso serve --workers 2` started
on a never-migrated PostgreSQL database, which says so at startup and becomes
ready by itself when `bso migrate` ends.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from alembic import command
from fastapi import FastAPI

from app.config import Settings
from app.http.app import create_app
from app.store.migrate import alembic_config, head_revision, upgrade_head
from tests.helpers import spec
from tests.support.server import (
    bso_args,
    clean_env,
    drop_postgres_database,
    free_port,
    fresh_postgres_database,
    running_server,
    wait_until_answers,
    worker_name,
)


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path, testrun_uid: str) -> Iterator[str]:
    """An empty database that no migration has touched."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    name = f"bso_unmig_{testrun_uid[:12]}_{worker_name()}"
    yield fresh_postgres_database(name)
    drop_postgres_database(name)


@pytest.fixture
async def served(fresh_url: str) -> AsyncIterator[tuple[FastAPI, httpx.AsyncClient]]:
    application = create_app(Settings(database_url=fresh_url, log_level="WARNING"))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield application, http


def assert_waits_for_migrate(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "5"
    message = response.json()["message"]
    assert "`bso migrate`" in message and "retry" in message, message


API_CALLS = [
    ("POST", "/jobs", spec(job_id="gate-1", job_id_prefix="gate")),
    ("GET", "/jobs/batch_size?job_id=gate-1", None),
    ("GET", "/jobs", None),
    ("GET", "/jobs/gate-1/trials", None),
    ("GET", "/dashboard", None),
]


async def test_the_api_answers_503_naming_bso_migrate_until_the_schema_is_at_head(
    fresh_url: str, served: tuple[FastAPI, httpx.AsyncClient]
) -> None:
    application, http = served
    for method, path, body in API_CALLS:
        assert_waits_for_migrate(await http.request(method, path, json=body))
    assert (await http.get("/healthz")).status_code == 200
    assert (await http.get("/openapi.json")).status_code == 200
    ready = await http.get("/readyz")
    assert ready.status_code == 503 and "run `bso migrate`" in ready.json()["detail"]
    assert "none (empty database)" in ready.json()["detail"]

    await asyncio.to_thread(upgrade_head, fresh_url)
    # No probe needed: a request re-reads the revision (at most once a second).
    deadline = time.monotonic() + 15
    while (response := await http.post("/jobs", json=API_CALLS[0][2])).status_code == 503:
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.2)
    assert response.status_code == 201, response.text
    for method, path, _ in API_CALLS[1:]:
        assert (await http.request(method, path)).status_code == 200, path
    assert (await http.get("/readyz")).json() == {
        "status": "ok",
        "detail": f"schema at {head_revision()}",
    }
    assert application.state.schema.serving


async def test_a_schema_older_than_head_is_503_naming_its_revision(fresh_url: str) -> None:
    await asyncio.to_thread(command.upgrade, alembic_config(fresh_url), "e9311ed50eb9")
    application = create_app(Settings(database_url=fresh_url, log_level="WARNING"))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.get("/jobs")
            assert_waits_for_migrate(response)
            assert "schema at revision e9311ed50eb9" in response.json()["message"]
            assert (await http.get("/readyz")).status_code == 503


async def test_a_database_downgraded_under_a_serving_process_is_503_not_500(
    fresh_url: str, served: tuple[FastAPI, httpx.AsyncClient]
) -> None:
    _, http = served
    await asyncio.to_thread(upgrade_head, fresh_url)
    assert (await http.get("/readyz")).status_code == 200
    assert (await http.get("/jobs")).status_code == 200

    await asyncio.to_thread(command.downgrade, alembic_config(fresh_url), "base")
    # The process still believes the schema serves: the missing table tells it otherwise.
    assert_waits_for_migrate(await http.get("/jobs"))
    assert_waits_for_migrate(await http.get("/jobs/gate-1"))


async def test_a_schema_newer_than_this_release_serves_for_rolling_upgrades(
    fresh_url: str, served: tuple[FastAPI, httpx.AsyncClient]
) -> None:
    application, http = served
    await asyncio.to_thread(upgrade_head, fresh_url)
    # What a newer release's migration leaves: a revision this code does not know.
    async with application.state.engine.begin() as connection:
        await connection.exec_driver_sql("UPDATE alembic_version SET version_num = 'f00dcafe0001'")
    ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert f"newer than this release's {head_revision()}" in ready.json()["detail"]
    created = await http.post("/jobs", json=spec(job_id="gate-2", job_id_prefix="gate"))
    assert created.status_code == 201, created.text


def test_a_server_started_before_the_migration_says_so_and_becomes_ready_by_itself(
    tmp_path: Path, testrun_uid: str
) -> None:
    name = f"bso_unmig_srv_{testrun_uid[:12]}_{worker_name()}"
    url = fresh_postgres_database(name)
    port = free_port()
    env = clean_env(BSO_DATABASE_URL=url, BSO_LOG_LEVEL="INFO")
    args = bso_args("serve", "--workers", "2", "--host", "127.0.0.1", "--port", str(port))
    try:
        with running_server(args, port=port, env=env, log_dir=tmp_path, cwd=tmp_path) as server:
            not_ready = wait_until_answers(server, "/readyz", status=503)
            assert "run `bso migrate`" in not_ready.json()["detail"]
            assert_waits_for_migrate(httpx.get(server.base_url + "/jobs", timeout=10))
            deadline = time.monotonic() + 30
            while server.log().count("not at " + head_revision()) < 2:  # one line per worker
                assert time.monotonic() < deadline, server.log()
                time.sleep(0.1)
            assert "database schema at revision none (empty database)" in server.log()

            migrated = subprocess.run(
                bso_args("migrate"), env=env, cwd=tmp_path, capture_output=True, text=True,
                timeout=120,
            )  # fmt: skip
            assert migrated.returncode == 0, migrated.stderr
            ready = wait_until_answers(server, "/readyz", status=200, timeout=30)
            assert ready.json()["detail"] == f"schema at {head_revision()}"
            # Both workers serve now (a connection each, so both are asked; each
            # reads the revision again within a second).
            for _ in range(6):
                wait_until_answers(server, "/jobs", status=200, timeout=10)
    finally:
        drop_postgres_database(name)
