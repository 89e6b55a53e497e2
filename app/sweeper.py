"""The lease sweep: every server process expires lapsed trials of all jobs, periodically.

A dispatch expires its own job's lapsed trials, but a job nobody dispatches
any more (its last training process was killed) would keep its Dispatched
trials forever. Every process sweeps; replicas share the work because the
sweep skips jobs whose rows another transaction holds (:func:`expire_leases`).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncEngine

from app.bandit import Lease
from app.service import log_expired, utcnow
from app.store import trials

logger = logging.getLogger(__name__)

SWEEP_BATCH = 100  # jobs locked per transaction


async def expire_leases(
    engine: AsyncEngine, *, now: datetime, lease: Lease, stop: asyncio.Event | None = None
) -> int:
    """Mark every trial whose lease ran out Failed, across all jobs; how many were.

    Each batch of jobs is one transaction holding their row locks. Jobs that
    another request or replica holds are skipped: a dispatch of that job
    expires its trials under the lock, and the next sweep takes the rest.
    Once ``stop`` is set (the server shuts down) no further batch starts.
    """
    renewed_before = lease.expired_before(now)
    if renewed_before is None:
        return 0
    total = 0
    while True:
        async with engine.begin() as conn:
            locked, expired = await trials.expire_lapsed_trials(
                conn, renewed_before=renewed_before, now=now, max_jobs=SWEEP_BATCH
            )
        log_expired(expired, lease)
        total += len(expired)
        if locked < SWEEP_BATCH or (stop is not None and stop.is_set()):
            return total


async def sweep_forever(engine: AsyncEngine, lease: Lease, stop: asyncio.Event) -> None:
    """Sweep every ``lease.sweep_every_s`` (jittered, so replicas drift apart) until ``stop``."""
    while True:
        with suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), lease.sweep_every_s * random.uniform(0.8, 1.2))
        if stop.is_set():
            return
        try:
            expired = await expire_leases(engine, now=utcnow(), lease=lease, stop=stop)
        except Exception as exc:  # a database outage must not end the sweeps
            logger.warning("lease sweep failed, retrying in %.0f s: %r", lease.sweep_every_s, exc)
            continue
        if expired:
            logger.info("lease sweep expired %d trial(s)", expired)


@asynccontextmanager
async def sweeping(
    engine: AsyncEngine, lease: Lease, *, finish_batch_s: float = 10.0
) -> AsyncIterator[None]:
    """Run :func:`sweep_forever` in the background while the context is open.

    On exit (the server shuts down) a sweep in progress finishes the batch it
    is in (one transaction) and starts no other; one that takes longer than
    ``finish_batch_s`` (a database that stopped answering) is cancelled,
    which rolls its batch back.
    """
    if not lease.enabled:
        yield
        return
    stop = asyncio.Event()
    task = asyncio.create_task(sweep_forever(engine, lease, stop), name="bso-lease-sweep")
    try:
        yield
    finally:
        stop.set()
        with suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(task, finish_batch_s)
