"""A busy database answers 503 with Retry-After and counts as busy (SPEC 7), for real.

The lock or the connection is really held: a job row locked by another
PostgreSQL transaction (the service's ``lock_timeout`` runs out), SQLite's
write lock held by another connection (its busy timeout runs out), and every
connection of the service's pool checked out (the pool's timeout runs out).
Each answer must be 503 with Retry-After and a JSON message, counted in
``bso_database_errors_total{kind="busy"}``, and the service must serve the
same request once the holder lets go.
"""

from __future__ import annotations

import asyncio
import re
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager, closing

import greenlet  # type: ignore[import-untyped]
import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from app import service
from app.config import Settings
from app.http.app import create_app
from tests.helpers import spec

LOCK_TIMEOUT_MS = 300


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
async def busy_app(request: pytest.FixtureRequest) -> AsyncIterator[FastAPI]:
    """The service with a short lock timeout and a one-connection pool (PostgreSQL)."""
    url = str(request.getfixturevalue(f"{request.param}_url"))
    settings = Settings(
        database_url=url, log_level="CRITICAL", lock_timeout_ms=LOCK_TIMEOUT_MS, pool_size=1
    )
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def http(busy_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=busy_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def busy_count(http: httpx.AsyncClient) -> float:
    page = (await http.get("/metrics")).text
    found = re.search(r'^bso_database_errors_total\{kind="busy"\} (\S+)$', page, re.MULTILINE)
    assert found, page
    return float(found.group(1))


def assert_busy(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers.get("retry-after") == "1", response.headers
    assert "retry" in response.json()["message"], response.text


async def running_trial(http: httpx.AsyncClient) -> dict[str, object]:
    job_id = f"busy-{uuid.uuid4().hex[:8]}"
    created = await http.post("/jobs", json=spec(job_id=job_id, job_id_prefix="busy"))
    assert created.status_code == 201, created.text
    dispatched = await http.get("/jobs/batch_size", params={"job_id": job_id})
    assert dispatched.status_code == 200, dispatched.text
    return dict(dispatched.json())


def final_report(trial: dict[str, object]) -> dict[str, object]:
    return {**trial, "time": 10.0, "energy": 1000.0, "metric": 0.95, "current_epoch": 1}


@asynccontextmanager
async def held_lock(engine: AsyncEngine, job_id: str) -> AsyncIterator[None]:
    """Another holder of the job's lock until the block ends, as another replica or process."""
    if engine.dialect.name == "postgresql":
        # Another transaction (another replica's request, say) holds the job's row
        # (the statement begins it).
        other = create_async_engine(
            engine.url.render_as_string(hide_password=False), poolclass=NullPool
        )
        try:
            async with other.connect() as holder:
                await holder.execute(
                    text("SELECT 1 FROM job WHERE job_id = :j FOR UPDATE"), {"j": job_id}
                )
                yield
                await holder.rollback()
        finally:
            await other.dispose()
    else:
        # Another process's connection holds SQLite's write lock.
        with closing(
            sqlite3.connect(str(engine.url.database), isolation_level=None)
        ) as holder_sqlite:
            holder_sqlite.execute("BEGIN IMMEDIATE")
            yield
            holder_sqlite.execute("ROLLBACK")


async def test_a_held_job_lock_or_write_lock_answers_503_busy_until_released(
    busy_app: FastAPI, http: httpx.AsyncClient
) -> None:
    trial = await running_trial(http)
    job_id = str(trial["job_id"])
    before = await busy_count(http)
    async with held_lock(busy_app.state.engine, job_id):
        dispatch = await http.get("/jobs/batch_size", params={"job_id": job_id})
        report = await http.post("/report", json=final_report(trial))
        end = await http.patch("/trials", json=trial)
        # Reads that decide nothing take no lock: answered meanwhile.
        read = await http.get(f"/jobs/{job_id}")
    for response in (dispatch, report, end):
        assert_busy(response)
    assert read.status_code == 200, read.text
    assert await busy_count(http) == before + 3

    # Released: the same requests are served.
    assert (await http.post("/report", json=final_report(trial))).json()["converged"] is True
    assert (await http.get("/jobs/batch_size", params={"job_id": job_id})).status_code == 200


async def test_an_exhausted_connection_pool_answers_503_busy(
    busy_app: FastAPI, http: httpx.AsyncClient
) -> None:
    trial = await running_trial(http)
    engine = busy_app.state.engine
    before = await busy_count(http)
    async with AsyncExitStack() as holding:
        # Every pooled connection in use (long requests, say): no request gets one in time.
        for _ in range(engine.pool.size()):
            await holding.enter_async_context(engine.connect())
        dispatch = await http.get("/jobs/batch_size", params={"job_id": str(trial["job_id"])})
        report = await http.post("/report", json=final_report(trial))
    assert_busy(dispatch)
    assert_busy(report)
    assert await busy_count(http) == before + 2
    assert (await http.post("/report", json=final_report(trial))).json()["converged"] is True


async def test_a_request_cancelled_while_it_waits_for_a_lock_returns_its_connection(
    busy_app: FastAPI, http: httpx.AsyncClient
) -> None:
    """A use case returns its connection in its own greenlet (store.engine): a cancelled
    task (a server stopping, say) still does, and the next request is served."""
    trial = await running_trial(http)
    job_id = str(trial["job_id"])
    engine = busy_app.state.engine
    async with held_lock(engine, job_id):
        dispatch = asyncio.create_task(service.dispatch_trial(engine, job_id, now=service.utcnow()))
        await asyncio.sleep(LOCK_TIMEOUT_MS / 1000 / 3)  # waiting for the lock by now
        assert engine.pool.checkedout() == 1
        dispatch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dispatch
        assert engine.pool.checkedout() == 0
    served = await http.get("/jobs/batch_size", params={"job_id": job_id})
    assert served.status_code == 200, served.text


async def test_a_request_cancelled_while_it_waits_for_a_pooled_connection_takes_none(
    busy_app: FastAPI, http: httpx.AsyncClient
) -> None:
    """The checkout is the use case's first step, in its greenlet (store.engine)."""
    trial = await running_trial(http)
    engine = busy_app.state.engine
    async with AsyncExitStack() as holding:
        for _ in range(engine.pool.size()):
            await holding.enter_async_context(engine.connect())
        held = engine.pool.checkedout()
        dispatch = asyncio.create_task(
            service.dispatch_trial(engine, str(trial["job_id"]), now=service.utcnow())
        )
        await asyncio.sleep(LOCK_TIMEOUT_MS / 1000 / 3)  # waiting for a connection by now
        dispatch.cancel()
        with pytest.raises(asyncio.CancelledError):
            await dispatch
        assert engine.pool.checkedout() == held
    assert engine.pool.checkedout() == 0
    assert (await http.post("/report", json=final_report(trial))).json()["converged"] is True


async def test_a_request_checks_out_runs_and_checks_in_in_one_greenlet(
    busy_app: FastAPI, http: httpx.AsyncClient
) -> None:
    """One switch into SQLAlchemy's synchronous core per request (store.engine)."""
    trial = await running_trial(http)
    sync_engine = busy_app.state.engine.sync_engine
    seen: list[tuple[str, object]] = []

    def on(step: str) -> Callable[..., None]:
        def record(*_: object) -> None:
            seen.append((step, greenlet.getcurrent()))

        return record

    hooks = [
        (sync_engine.pool, "checkout", on("checkout")),
        (sync_engine, "before_cursor_execute", on("statement")),
        (sync_engine.pool, "checkin", on("checkin")),
    ]
    for target, name, hook in hooks:
        event.listen(target, name, hook)
    try:
        for request in (
            http.get("/jobs/batch_size", params={"job_id": str(trial["job_id"])}),  # a writer
            http.post("/report", json={**final_report(trial), "metric": 0.1}),  # lock-free
        ):
            seen.clear()
            assert (await request).status_code == 200
            steps = [step for step, _ in seen]
            assert steps[0] == "checkout" and steps[-1] == "checkin", steps
            assert "statement" in steps, steps
            assert len({id(where) for _, where in seen}) == 1, seen
    finally:
        for target, name, hook in hooks:
            event.remove(target, name, hook)
