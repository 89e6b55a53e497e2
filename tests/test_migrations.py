"""Migrations on fresh databases of both kinds: the CLI, model agreement, down and up.

Also readiness: /readyz is 503 until the database is at the latest revision.
"""

from __future__ import annotations

import asyncio
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import CheckConstraint, Connection, inspect

from app.config import Settings
from app.http.app import create_app
from app.store.engine import create_engine
from app.store.migrate import alembic_config, head_revision, upgrade_head
from app.store.tables import metadata
from tests.support.server import (
    REPO_ROOT,
    VENV_BIN,
    clean_env,
    drop_postgres_database,
    fresh_postgres_database,
    worker_name,
)

TABLES = {"job", "batch_size", "trial", "arm", "token", "job_group", "group_batch_size"}


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path, testrun_uid: str) -> Iterator[str]:
    """An empty database that no migration has touched."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'nested' / 'fresh.db'}"
        return
    name = f"bso_mig_{testrun_uid[:12]}_{worker_name()}"
    yield fresh_postgres_database(name)
    drop_postgres_database(name)


def alembic(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``alembic`` command an operator runs from the repository root."""
    return subprocess.run(
        [str(VENV_BIN / "alembic"), *args],
        cwd=REPO_ROOT,
        env=clean_env(BSO_DATABASE_URL=url),
        capture_output=True,
        text=True,
        timeout=60,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"{result.args}: {result.returncode}\n{result.stderr}"
    return result.stdout + result.stderr


async def on_connection(url: str, work: Any) -> Any:
    """Run ``work(sync_connection)`` against ``url`` with the service's own engine."""
    engine = create_engine(Settings(database_url=url))
    try:
        async with engine.connect() as connection:
            return await connection.run_sync(work)
    finally:
        await engine.dispose()


def _schema(connection: Connection) -> dict[str, Any]:
    inspector = inspect(connection)
    tables = set(inspector.get_table_names()) - {"alembic_version"}
    return {
        "tables": tables,
        "checks": {
            t: sorted(c["name"] for c in inspector.get_check_constraints(t)) for t in tables
        },
        "diff": compare_metadata(
            MigrationContext.configure(connection, opts={"compare_type": True}), metadata
        ),
        "revision": MigrationContext.configure(connection).get_current_revision(),
    }


def _model_checks() -> dict[str, list[str]]:
    return {
        table.name: sorted(str(c.name) for c in table.constraints if isinstance(c, CheckConstraint))
        for table in metadata.sorted_tables
    }


async def test_alembic_upgrade_head_from_the_cli_builds_the_schema_the_models_describe(
    fresh_url: str,
) -> None:
    ok(alembic(fresh_url, "upgrade", "head"))
    assert "No new upgrade operations detected" in ok(alembic(fresh_url, "check"))

    schema = await on_connection(fresh_url, _schema)
    assert schema["tables"] == TABLES
    assert schema["diff"] == []
    assert schema["revision"] == head_revision()
    # Autogenerate does not compare CHECK constraints: compare their names.
    assert schema["checks"] == _model_checks()


async def test_downgrade_to_base_and_upgrade_to_head_again_work(fresh_url: str) -> None:
    upgrade_head(fresh_url)
    upgrade_head(fresh_url)  # again: nothing to do, no error
    await asyncio.to_thread(command.downgrade, alembic_config(fresh_url), "base")
    emptied = await on_connection(fresh_url, _schema)
    assert emptied["tables"] == set() and emptied["revision"] is None
    upgrade_head(fresh_url)
    again = await on_connection(fresh_url, _schema)
    assert (
        again["tables"] == TABLES and again["diff"] == [] and again["revision"] == head_revision()
    )
    assert again["checks"] == _model_checks()


@pytest.fixture
async def ready_client(fresh_url: str) -> AsyncIterator[httpx.AsyncClient]:
    application = create_app(Settings(database_url=fresh_url, log_level="WARNING"))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            yield http


async def test_readyz_is_503_until_the_database_is_migrated(
    fresh_url: str, ready_client: httpx.AsyncClient
) -> None:
    assert (await ready_client.get("/healthz")).status_code == 200
    before = await ready_client.get("/readyz")
    assert before.status_code == 503, before.text
    assert before.json()["status"] == "unavailable"
    assert "bso migrate" in before.json()["detail"]

    upgrade_head(fresh_url)
    after = await ready_client.get("/readyz")
    assert after.status_code == 200, after.text
    assert after.json() == {"status": "ok", "detail": f"schema at {head_revision()}"}

    await asyncio.to_thread(command.downgrade, alembic_config(fresh_url), "base")
    downgraded = await ready_client.get("/readyz")
    assert downgraded.status_code == 503, downgraded.text


async def test_readyz_is_503_when_the_database_is_unreachable() -> None:
    unreachable = "postgresql+asyncpg://postgres@127.0.0.1:1/nowhere"
    application = create_app(Settings(database_url=unreachable, log_level="CRITICAL"))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            response = await http.get("/readyz")
            assert response.status_code == 503, response.text
            assert response.json()["status"] == "unavailable"
            assert "unreachable" in response.json()["detail"]
            assert (await http.get("/healthz")).status_code == 200


async def test_sqlite_timestamps_of_the_driver_era_are_rewritten_in_one_format(
    tmp_path: Path,
) -> None:
    # Rows as the hand-made driver layer wrote them: ISO 8601 with T and zone.
    url = f"sqlite+aiosqlite:///{tmp_path / 'old.db'}"
    await asyncio.to_thread(command.upgrade, alembic_config(url), "a1f5336b4df4")

    def old_rows(connection: Connection) -> None:
        connection.exec_driver_sql(
            "INSERT INTO job VALUES ('j-1', 'j', 64, 0.5, 2.0, 0.9, 1, 10, 2, 0, 0.0, 0.0, 2,"
            " NULL, 300.0, 1, 'A40', 'Pruning', NULL, 64, 2, NULL,"
            " '2026-11-28T01:52:40.561302+00:00', '2026-11-28T02:00:00.000000+00:00')"
        )
        connection.exec_driver_sql("INSERT INTO batch_size VALUES ('j-1', 64, 0, 0.0, 0.0)")
        connection.exec_driver_sql(
            "INSERT INTO trial VALUES ('j-1', 1, 64, 'Exploration', 'Failed',"
            " '2026-11-28T01:53:00.000001+00:00', '2026-11-28T01:59:59.999999+00:00',"
            " NULL, NULL, NULL, NULL)"
        )
        connection.commit()

    await on_connection(url, old_rows)
    upgrade_head(url)

    def stored(connection: Connection) -> list[Any]:
        return list(
            connection.exec_driver_sql(
                "SELECT created_at, updated_at, start_timestamp, end_timestamp FROM job, trial"
            ).one()
        )

    assert await on_connection(url, stored) == [
        "2026-11-28 01:52:40.561302",
        "2026-11-28 02:00:00.000000",
        "2026-11-28 01:53:00.000001",
        "2026-11-28 01:59:59.999999",
    ]
    application = create_app(Settings(database_url=url, log_level="WARNING"))
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            job = (await http.get("/jobs/j-1")).json()
            trial = (await http.get("/jobs/j-1/trials")).json()["items"][0]
    assert job["created_at"] == "2026-11-28T01:52:40.561302Z"
    assert trial["end_timestamp"] == "2026-11-28T01:59:59.999999Z"


async def test_the_policy_migration_keeps_jobs_and_their_trials_both_ways(fresh_url: str) -> None:
    # SQLite must not copy job or batch_size (their cascades would empty trial and arm).
    config = alembic_config(fresh_url)
    await asyncio.to_thread(command.upgrade, config, "7d3a9c2e4b10")

    def old_rows(connection: Connection) -> None:
        connection.exec_driver_sql(
            "INSERT INTO job (job_id, job_id_prefix, default_batch_size, eta_knob, beta_knob,"
            " target_metric, higher_is_better_metric, max_epochs, num_pruning_rounds,"
            " window_size, mab_prior_mean, mab_prior_precision, mab_num_explorations, mab_seed,"
            " max_power, number_of_gpus, gpu_model, stage, min_cost, min_cost_batch_size,"
            " next_trial_number, rng_state, created_at, updated_at) VALUES ('j-1', 'j', 64, 0.5,"
            " 2.0, 0.9, true, 10, 2, 0, 0.0, 0.0, 2, NULL, 300.0, 1, 'A40', 'MAB', 5.0, 64, 2,"
            " NULL, '2026-11-28 01:00:00', '2026-11-28 01:00:00')"
        )
        connection.exec_driver_sql("INSERT INTO batch_size VALUES ('j-1', 64, 1, -5.0, 0.0)")
        connection.exec_driver_sql(
            "INSERT INTO trial (job_id, trial_number, batch_size, type, status,"
            " start_timestamp, lease_renewed_at) VALUES ('j-1', 1, 64, 'MAB', 'Dispatched',"
            " '2026-11-28 01:00:00', '2026-11-28 01:00:00')"
        )
        connection.exec_driver_sql("INSERT INTO arm VALUES ('j-1', 64, -5.0, 1.0, 1.0, 1)")
        connection.commit()

    def counts(connection: Connection) -> list[int]:
        return [
            connection.exec_driver_sql(f"SELECT count(*) FROM {t}").scalar_one()
            for t in ("job", "batch_size", "trial", "arm")
        ]

    await on_connection(fresh_url, old_rows)
    await asyncio.to_thread(command.upgrade, config, "head")
    assert await on_connection(fresh_url, counts) == [1, 1, 1, 1]

    def policy_and_new_columns(connection: Connection) -> list[Any]:
        return list(connection.exec_driver_sql(
            "SELECT policy, min_converged_epochs, pruning_round, last_epoch, last_cost"
            " FROM job JOIN batch_size USING (job_id) JOIN trial USING (job_id)"
        ).one())  # fmt: skip

    assert await on_connection(fresh_url, policy_and_new_columns) == [
        "zeus",
        None,
        None,
        None,
        None,
    ]
    await asyncio.to_thread(command.downgrade, config, "7d3a9c2e4b10")
    assert await on_connection(fresh_url, counts) == [1, 1, 1, 1]
