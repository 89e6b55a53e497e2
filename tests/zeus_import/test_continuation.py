"""A job driven on the real Zeus 0.16 server, imported, goes on exactly as on Zeus.

For each database Zeus deploys on (SQLite, PostgreSQL, MariaDB): the Zeus
server runs a seeded job through its pruning stage and into the bandit
stage, one more trial is dispatched and still training, and ``bso
import-zeus`` copies the database into a PostgreSQL database and a SQLite
file. Then the running trial finishes and more recurrences run, on the Zeus
server and on both of ours: every server chooses the same batch sizes.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from app.config import Settings
from app.http.app import create_app
from tests.conftest import RUN_ID
from tests.support.server import drop_postgres_database, fresh_postgres_database, worker_name
from tests.support.zeus_server import (
    SPEC,
    Dispatched,
    dispatch,
    drop_mariadb_database,
    fresh_mariadb_database,
    import_zeus,
    recurrences,
    running_zeus_server,
    train,
)

ON_ZEUS = 12  # 7 pruning explorations (2 rounds), then 5 bandit trials
AFTER = 6  # recurrences after the switch
LEASE_S = 3600
LEASE = timedelta(seconds=LEASE_S)


def _name(role: str) -> str:
    return f"bso_test_zeusimport_{role}_{RUN_ID}_{worker_name()}"


@pytest.fixture(params=["sqlite", "postgresql", "mariadb"])
def zeus_database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """An empty database for the Zeus server: (its async URL, the URL an operator passes).

    The second is what a Zeus deployment's ZEUS_BSO_DATABASE_URL may say; the
    importer maps it to its async driver.
    """
    if request.param == "sqlite":
        path = tmp_path / "zeus.db"
        yield f"sqlite+aiosqlite:///{path}", f"sqlite:///{path}"
    elif request.param == "postgresql":
        url = fresh_postgres_database(_name("pgsrc"))
        yield url, url.replace("postgresql+asyncpg://", "postgresql://")
        drop_postgres_database(_name("pgsrc"))
    else:
        url = fresh_mariadb_database(_name("mysrc"))
        yield url, url.replace("mysql+aiomysql://", "mysql+pymysql://")  # Zeus's compose file
        drop_mariadb_database(_name("mysrc"))


@pytest.fixture
def targets(tmp_path: Path) -> Iterator[dict[str, str]]:
    """Our databases to import into, not migrated yet (the import migrates them)."""
    yield {
        "postgresql": fresh_postgres_database(_name("dst")),
        "sqlite": f"sqlite+aiosqlite:///{tmp_path / 'bso.db'}",
    }
    drop_postgres_database(_name("dst"))


async def _go_on(http: httpx.AsyncClient, running: Dispatched) -> list[int]:
    """Finish the trial that was training at the switch, then more recurrences."""
    await train(http, running, ON_ZEUS)
    return await recurrences(http, ON_ZEUS + 1, AFTER)


async def _go_on_with_ours(
    database_url: str, running: Dispatched, imported: tuple[datetime, datetime]
) -> list[int]:
    settings = Settings(database_url=database_url, log_level="WARNING", trial_lease_s=LEASE_S)
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            # The trial training at the switch was imported running, leased from the import.
            listed = await http.get(
                f"/jobs/{SPEC['job_id']}/trials", params={"status": "Dispatched"}
            )
            (trial,) = listed.json()["items"]
            assert trial["trial_number"] == running.trial_number
            leased_at = datetime.fromisoformat(trial["lease_expires_at"]) - LEASE
            assert imported[0] <= leased_at <= imported[1]
            return await _go_on(http, running)


async def test_an_imported_job_chooses_what_zeus_would(
    zeus_database: tuple[str, str], targets: dict[str, str], tmp_path: Path
) -> None:
    server_url, source_url = zeus_database
    with running_zeus_server(server_url, tmp_path) as zeus:
        async with httpx.AsyncClient(base_url=zeus.base_url, timeout=30.0) as http:
            before = await recurrences(http, 0, ON_ZEUS)
            running = await dispatch(http)  # still training when the switch happens

            # The operator stops sending work to Zeus and imports its database.
            started = datetime.now(UTC)
            imports = import_zeus(source_url, *targets.values())
            imported = (started, datetime.now(UTC))
            for status, out, err in imports:
                assert status == 0, err
                assert (
                    f"imported job '{SPEC['job_id']}': 4 batch sizes, {ON_ZEUS + 1} trials "
                    "(1 Dispatched, leased from now), 3 arms, stage MAB"
                ) in out
                assert "Jobs: 1 imported, 0 skipped, 0 refused." in out
            ((status, out, err),) = import_zeus(source_url, targets["sqlite"])  # safe twice
            assert status == 0, err
            assert f"skipped job '{SPEC['job_id']}': already here with the same spec" in out

            on_zeus = await _go_on(http, running)
    on_ours = {
        name: await _go_on_with_ours(url, running, imported) for name, url in targets.items()
    }

    assert before[:7] == [32, 16, 8, 64, 16, 8, 32]  # the pruning walk, then the bandit
    assert on_ours == {"postgresql": on_zeus, "sqlite": on_zeus}
    # The bandit's draws matter: with another generator state, other choices.
    assert len({*on_zeus, running.batch_size}) > 1, on_zeus
