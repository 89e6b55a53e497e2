"""Replicas sweeping one database expire each lapsed trial exactly once.

Each replica is its own engine (its own pool of connections), as two server
processes are. On PostgreSQL the sweep locks job rows with ``FOR UPDATE SKIP
LOCKED``: a job that another transaction holds is skipped rather than waited
for. SQLite has one writer at a time (``BEGIN IMMEDIATE``): sweeps take turns
with each other and with requests, and a sweep waits for a held write lock
(up to the busy timeout) instead of passing a held job by.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from contextlib import closing
from datetime import timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from app import service, sweeper
from app.bandit import Lease
from app.config import Settings
from app.schemas import JobSpec
from app.store.engine import DatabaseFault, classify, create_engine
from tests.helpers import spec

LEASE = Lease(3600)
JOBS = 30
T0 = service.utcnow()
LATER = T0 + timedelta(seconds=LEASE.seconds + 1)


@pytest.fixture
async def replicas(postgresql_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    # A short lock timeout: a sweep that waited for a held job would fail, not hang.
    settings = Settings(database_url=postgresql_url, lock_timeout_ms=2000)
    engines = (create_engine(settings), create_engine(settings))
    async with engines[0].begin() as conn:
        await conn.execute(text("TRUNCATE job, batch_size, trial, arm"))
    yield engines
    for engine in engines:
        await engine.dispose()


@pytest.fixture
async def sqlite_replicas(sqlite_url: str) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    settings = Settings(database_url=sqlite_url, lock_timeout_ms=1000)
    engines = (create_engine(settings), create_engine(settings))
    async with engines[0].begin() as conn:
        await conn.execute(text("DELETE FROM job"))  # cascades
    yield engines
    for engine in engines:
        await engine.dispose()


async def _lapsed_jobs(engine: AsyncEngine) -> None:
    for i in range(JOBS):
        job = JobSpec.model_validate(spec(job_id=f"sweep-{i:02d}", job_id_prefix="sweep"))
        await service.register_job(engine, job, now=T0)
        for _ in range(2):  # an exploration, then a Concurrent trial beside it
            await service.dispatch_trial(engine, job.job_id or "", now=T0, lease=LEASE)


async def _statuses(engine: AsyncEngine) -> dict[tuple[str, str | None], int]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT status, failure_reason, count(*) FROM trial GROUP BY 1, 2")
        )
        return {(r[0], r[1]): r[2] for r in rows}


async def test_two_replicas_sweeping_at_once_expire_each_trial_once(
    replicas: tuple[AsyncEngine, AsyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = replicas
    await _lapsed_jobs(first)
    monkeypatch.setattr(sweeper, "SWEEP_BATCH", 4)  # many small transactions, interleaved

    # A request holds one job's lock throughout: the sweeps pass it by.
    async with first.connect() as holder:
        await holder.execute(text("SELECT 1 FROM job WHERE job_id = 'sweep-07' FOR UPDATE"))
        sweeps = [
            sweeper.expire_leases(engine, now=LATER, lease=LEASE)
            for engine in (first, second)
            for _ in range(3)
        ]
        counts = await asyncio.wait_for(asyncio.gather(*sweeps), timeout=30)
        assert sum(counts) == 2 * (JOBS - 1), counts
        assert await _statuses(second) == {
            ("Failed", "LeaseExpired"): 2 * (JOBS - 1),
            ("Dispatched", None): 2,
        }
        await holder.rollback()

    # Released: the next sweep, on either replica, takes the rest.
    again = await asyncio.gather(
        sweeper.expire_leases(first, now=LATER, lease=LEASE),
        sweeper.expire_leases(second, now=LATER, lease=LEASE),
    )
    assert sum(again) == 2, again
    assert await _statuses(first) == {("Failed", "LeaseExpired"): 2 * JOBS}


async def test_two_sqlite_replicas_sweeping_at_once_take_turns_and_expire_each_trial_once(
    sqlite_replicas: tuple[AsyncEngine, AsyncEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = sqlite_replicas
    await _lapsed_jobs(first)
    monkeypatch.setattr(sweeper, "SWEEP_BATCH", 4)  # many small transactions, interleaved
    path = first.url.database
    assert path is not None

    # Another process holds the write lock past the busy timeout: a sweep gives up (busy),
    # having changed nothing; the sweeper retries on its next round.
    with closing(sqlite3.connect(path, isolation_level=None)) as holder:
        holder.execute("BEGIN IMMEDIATE")
        with pytest.raises(Exception) as refused:  # the driver's error, wrapped
            await sweeper.expire_leases(first, now=LATER, lease=LEASE)
        holder.execute("ROLLBACK")
    assert classify(refused.value) is DatabaseFault.BUSY, refused.value
    assert await _statuses(second) == {("Dispatched", None): 2 * JOBS}

    # Held briefly: the sweeps wait their turn (they do not pass a held job by), then
    # share the work with each other, each trial expired once.
    with closing(sqlite3.connect(path, isolation_level=None)) as holder:
        holder.execute("BEGIN IMMEDIATE")
        sweeps = [
            asyncio.ensure_future(sweeper.expire_leases(engine, now=LATER, lease=LEASE))
            for engine in (first, second)
            for _ in range(3)
        ]
        await asyncio.sleep(0.3)
        assert not any(s.done() for s in sweeps), "a sweep ran while the write lock was held"
        holder.execute("ROLLBACK")
    counts = await asyncio.wait_for(asyncio.gather(*sweeps), timeout=30)
    assert sum(counts) == 2 * JOBS, counts
    assert await _statuses(first) == {("Failed", "LeaseExpired"): 2 * JOBS}
