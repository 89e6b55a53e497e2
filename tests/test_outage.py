"""PostgreSQL drops the service's connections under load: 503s, never 500s or silence.

The service's backends are terminated (``pg_terminate_backend``, as a failover
or an operator would) again and again while clients post reports, or train
whole trials (dispatch, final report, end: every request a write). Every
request must still get an answer: 200, or 503 with Retry-After and a JSON
message; a dead pooled connection is discarded, and once the killing stops
every request succeeds again on fresh connections. Afterwards the database
passes the consistency check (tests/support/consistency.py), every answered
write in it. (tests/test_crash_consistency.py cuts at each statement, one at
a time; here the kills land wherever they land.)
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from app.store.migrate import upgrade_head
from tests.helpers import spec
from tests.support.consistency import Acknowledged, check_consistency
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


@pytest.fixture(scope="module")
def database(testrun_uid: str) -> Iterator[tuple[str, str]]:
    name = f"bso_outage_{testrun_uid[:12]}_{worker_name()}"
    url = fresh_postgres_database(name)
    upgrade_head(url)
    yield name, url
    drop_postgres_database(name)


@pytest.fixture(scope="module")
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


async def _retried(
    http: httpx.AsyncClient, method: str, path: str, answers: Counter[str], **kwargs: Any
) -> httpx.Response:
    """Send until answered 200 (retrying is safe, SPEC 7); count every answer."""
    for _ in range(200):
        try:
            response = await http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            answers[f"no answer: {type(exc).__name__}"] += 1
            continue
        if response.status_code == 503 and response.headers.get("retry-after"):
            answers["503"] += 1
            await asyncio.sleep(0.02)
            continue
        answers[str(response.status_code)] += 1
        return response
    raise AssertionError(f"{method} {path} never succeeded: {answers}")


async def _trainer(
    http: httpx.AsyncClient,
    index: int,
    stop: asyncio.Event,
    answers: Counter[str],
    acknowledged: Acknowledged,
) -> None:
    """Whole trials, one after another: every request a write."""
    rounds = 0
    while not stop.is_set():
        rounds += 1
        response = await http.get("/jobs/batch_size", params={"job_id": "outage-2"})
        if response.status_code == 503:  # not retried: a dispatch retried may dispatch twice
            answers["503"] += 1
            await asyncio.sleep(0.02)
            continue
        answers[str(response.status_code)] += 1
        if response.status_code != 200:
            return
        trial = response.json()
        key = ("outage-2", trial["trial_number"])
        acknowledged.dispatched[key] = trial["batch_size"]
        if (index + rounds) % 4 == 0:  # ended without a result
            ended = await _retried(http, "PATCH", "/trials", answers, json=trial)
            if ended.json()["status"] == "Failed":
                acknowledged.ended.add(key)
            continue
        seconds = 10.0 + trial["batch_size"] / 8 + rounds % 3
        body = {**trial, "time": seconds, "energy": seconds * 200, "metric": 0.95,
                "current_epoch": 1}  # fmt: skip
        verdict = await _retried(http, "POST", "/report", answers, json=body)
        acknowledged.results[key] = (seconds, seconds * 200, verdict.json()["converged"])


async def _in_bandit(http: httpx.AsyncClient) -> bool:
    """Whether outage-2 has a Succeeded bandit-stage trial (False while the read fails)."""
    params: dict[str, str | int] = {"status": "Succeeded", "type": "MAB", "limit": 1}
    response = await http.get("/jobs/outage-2/trials", params=params)
    return response.status_code == 200 and bool(response.json()["items"])


async def test_terminated_backends_during_writes_leave_every_job_consistent(
    server: Server, database: tuple[str, str]
) -> None:
    name, url = database
    limits = httpx.Limits(max_connections=CLIENTS, max_keepalive_connections=CLIENTS)
    acknowledged = Acknowledged(jobs={"outage-2"})
    answers: Counter[str] = Counter()
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=30) as http:
        job = spec(job_id="outage-2", job_id_prefix="outage", num_pruning_rounds=1,
                   beta_knob=None, mab_seed=None)  # fmt: skip
        # A connection the kills of the test before left dead in the pool answers 503 once.
        registered = await _retried(http, "POST", "/jobs", answers, json=job)
        assert registered.status_code in (200, 201), registered.text
        stop = asyncio.Event()
        clients = [
            asyncio.create_task(_trainer(http, i, stop, answers, acknowledged))
            for i in range(CLIENTS)
        ]
        # At least KILLS kills, and on until the bandit stage has results too (a busy
        # machine trains slowly), within reason.
        kills, deadline = 0, time.monotonic() + 60
        while kills < KILLS or (not await _in_bandit(http) and time.monotonic() < deadline):
            await asyncio.sleep(0.15)
            await asyncio.to_thread(_terminate_backends, name)
            kills += 1
        stop.set()
        await asyncio.gather(*clients)
        state = (await http.get("/jobs/outage-2")).json()

    assert set(answers) <= {"200", "201", "503"}, (answers, server.log())
    assert answers["503"] > 0, f"no write saw the outage: {answers}"
    assert acknowledged.results and acknowledged.ended, acknowledged
    assert state["stage"] == "MAB", state  # through pruning into the bandit stage
    engine = create_async_engine(url, poolclass=NullPool)
    try:
        await check_consistency(engine, acknowledged)
    finally:
        await engine.dispose()
