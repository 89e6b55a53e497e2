"""The lease sweep: every server process expires lapsed trials of all jobs, periodically.

A dispatch expires its own job's lapsed trials, but a job nobody dispatches
any more (its last training process was killed) would keep its Dispatched
trials forever. Every process sweeps; replicas share the work because the
sweep skips jobs whose rows another transaction holds (service.expire_leases).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

from sqlalchemy.ext.asyncio import AsyncEngine

from app.bandit import Lease
from app.service import expire_leases, utcnow

logger = logging.getLogger(__name__)


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
