"""bso-client against the real Zeus 0.16 server: "it also works against a Zeus server".

client/README.md and SPEC 13 promise that the client speaks Zeus's wire API
only. Here it runs whole recurrences of a job against Zeus's own server (its
venv, .venv-zeus; its database on MariaDB, as Zeus deploys it): registration,
a batch size per recurrence, a report per epoch until Zeus says stop, and the
end. Warnings are errors, so a fallback to the default batch size (a request
Zeus refused or did not understand) fails the test; what Zeus stored is read
from its own tables.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from bso_client import BatchSizeOptimizer
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from tests.client.conftest import FAST, CountingMeter, Recorder, spec
from tests.conftest import RUN_ID
from tests.support.server import Server, worker_name
from tests.support.zeus_server import (
    drop_mariadb_database,
    fresh_mariadb_database,
    running_zeus_server,
)

RECURRENCES = 8  # the pruning walk over 3 batch sizes (2 rounds), then the bandit
EPOCHS_TO_TARGET = {16: 3, 32: 2, 64: 2}


@pytest.fixture(scope="module")
def zeus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """Zeus's server on a fresh MariaDB database: (the server, its database URL)."""
    name = f"bso_test_zeusclient_{RUN_ID}_{worker_name()}"
    url = fresh_mariadb_database(name)
    try:
        with running_zeus_server(url, tmp_path_factory.mktemp("zeus-client")) as server:
            yield server, url
    finally:
        drop_mariadb_database(name)


def zeus_trials(url: str, job_id: str) -> list[dict[str, Any]]:
    """Zeus's Trial rows of the job, by trial number."""

    async def read() -> list[dict[str, Any]]:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(
                    text(
                        "SELECT trial_number, batch_size, status, time, energy, converged "
                        "FROM Trial WHERE job_id = :job_id ORDER BY trial_number"
                    ),
                    {"job_id": job_id},
                )
                return [dict(r._mapping) for r in rows]
        finally:
            await engine.dispose()

    return asyncio.run(read())


@pytest.mark.filterwarnings("error")
def test_the_client_runs_recurrences_against_the_zeus_server(
    zeus: tuple[Server, str], job_id: str
) -> None:
    server, url = zeus
    meter = CountingMeter()
    recorder = Recorder()
    sent: dict[int, tuple[int, float, float, bool]] = {}
    with recorder.client() as http:
        for _ in range(RECURRENCES):  # each recurrence a new process, as a nightly job runs
            job = spec(job_id, batch_sizes=[16, 32, 64], max_epochs=4, mab_seed=11)
            bso = BatchSizeOptimizer(
                job=job, url=server.base_url, energy=meter, retry=FAST, http_client=http
            )
            with bso, bso.trial() as trial:
                assert not trial.fallback and trial.trial_number is not None
                for epoch in range(1, trial.max_epochs + 1):
                    meter.work(150.0 * trial.batch_size)
                    reached = epoch >= EPOCHS_TO_TARGET[trial.batch_size]
                    decision = trial.report(metric=0.95 if reached else 0.3)
                    assert not decision.fallback
                    if decision.stop:
                        break
                assert decision.stop, "Zeus never said stop within max_epochs"
                sent[trial.trial_number] = (
                    trial.batch_size, trial.time, trial.energy, decision.converged
                )  # fmt: skip
    assert recorder.statuses("POST", "/jobs")[:1] == [201]
    assert set(recorder.statuses("POST", "/jobs")[1:]) == {200}  # Zeus: already registered
    assert {s for _, _, s in recorder.answers} <= {200, 201}, recorder.answers

    stored = zeus_trials(url, job_id)
    assert [t["trial_number"] for t in stored] == list(range(1, RECURRENCES + 1))
    for row in stored:
        batch_size, seconds, joules, converged = sent[row["trial_number"]]
        assert row["status"] in ("Succeeded", "TrialStatus.Succeeded"), row
        assert row["batch_size"] == batch_size
        assert (row["time"], row["energy"]) == (pytest.approx(seconds), pytest.approx(joules))
        assert bool(row["converged"]) == converged
    assert {t["batch_size"] for t in stored} == {16, 32, 64}  # the walk tried each
    assert any(t["converged"] for t in stored)
