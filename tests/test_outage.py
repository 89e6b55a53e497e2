"""PostgreSQL drops the service's connections under load: 503s, never 500s or silence.

The service's backends are terminated (``pg_terminate_backend``, as a failover
or an operator would) again and again while clients post reports. Every
request must still get an answer: 200, or 503 with Retry-After and a JSON
message; a dead pooled connection is discarded, and once the killing stops
every request succeeds again on fresh connections.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from app.migrate import upgrade_head
from tests.helpers import spec
from tests.support.server import (
    Server,
    _run_admin,
    bso_args,
    clean_env,
    drop_postgres_database,
    free_port,
    fresh_postgres_database,
    running_server,
    worker_name,
)

CLIENTS = 8
KILLS = 12


@pytest.fixture
def database(testrun_uid: str) -> Iterator[tuple[str, str]]:
    name = f"bso_outage_{testrun_uid[:12]}_{worker_name()}"
    url = fresh_postgres_database(name)
    upgrade_head(url)
    yield name, url
    drop_postgres_database(name)


@pytest.fixture
def server(database: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    _, url = database
    port = free_port()
    folder = tmp_path_factory.mktemp("outage")
    env = clean_env(BSO_DATABASE_URL=url, BSO_LOG_LEVEL="CRITICAL", BSO_POOL_SIZE="4")
    args = bso_args("serve", "--workers", "2", "--host", "127.0.0.1", "--port", str(port))
    with running_server(args, port=port, env=env, log_dir=folder, ready_path="/readyz") as running:
        yield running


def _terminate_backends(name: str) -> None:
    _run_admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
        f" WHERE datname = '{name}' AND pid <> pg_backend_pid()"
    )


async def _reporter(
    http: httpx.AsyncClient, trial: dict[str, Any], stop: asyncio.Event, answers: Counter[str]
) -> None:
    epoch = 0
    while not stop.is_set():
        epoch += 1
        body = {**trial, "time": 1.0 * epoch, "energy": 10.0 * epoch, "metric": 0.1,
                "current_epoch": 1}  # fmt: skip
        try:
            response = await http.post("/report", json=body)
        except httpx.TransportError as exc:  # closed without an answer
            answers[f"no answer: {type(exc).__name__}"] += 1
            continue
        if response.status_code == 503:
            ok = response.headers.get("retry-after") and "retry" in response.json()["message"]
            answers["503" if ok else f"503 without Retry-After: {response.text}"] += 1
        else:
            answers[str(response.status_code)] += 1


async def test_terminated_backends_answer_503_and_the_service_recovers(
    server: Server, database: tuple[str, str]
) -> None:
    name, _ = database
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=30) as http:
        job = spec(job_id="outage-1", job_id_prefix="outage", max_epochs=1000, beta_knob=None)
        assert (await http.post("/jobs", json=job)).status_code == 201
        trials = []
        for _ in range(CLIENTS):
            response = await http.get("/jobs/batch_size", params={"job_id": "outage-1"})
            assert response.status_code == 200, response.text
            trials.append(response.json())

        stop = asyncio.Event()
        answers: Counter[str] = Counter()
        clients = [asyncio.create_task(_reporter(http, t, stop, answers)) for t in trials]
        for _ in range(KILLS):
            await asyncio.sleep(0.15)
            await asyncio.to_thread(_terminate_backends, name)
        stop.set()
        await asyncio.gather(*clients)

        assert set(answers) <= {"200", "503"}, (answers, server.log())
        assert answers["503"] > 0, f"no request saw the outage: {answers}"
        assert answers["200"] > 0, answers

        # The killing stopped: every request gets a fresh connection and succeeds.
        deadline = time.monotonic() + 10
        while True:
            statuses = [
                (await http.post("/report", json={**t, "time": 1.0, "energy": 1.0,
                                                  "metric": 0.1, "current_epoch": 1})).status_code
                for t in trials
            ]  # fmt: skip
            if set(statuses) == {200} or time.monotonic() > deadline:
                break
        assert set(statuses) == {200}, statuses
        dispatched = await http.get("/jobs/batch_size", params={"job_id": "outage-1"})
        assert dispatched.status_code == 200, dispatched.text
