"""CPU cost of one database statement through each layer, in-process, on PostgreSQL.

Not an HTTP benchmark: it explains the hot loop's numbers. The same primary-key
lookup of a job row goes through raw asyncpg, SQLAlchemy's driver-level and
Core paths, and the ORM paths the service used before it moved to the driver
(the evidence for that rewrite); plus the per-request session/transaction
lifecycle; and last, the service's current path (app/database.py,
app/repository.py) and two whole use cases that the hot loop calls most.
Reports the best of 3 runs of ``--n`` calls, in microseconds of this
process's CPU per call (the round trip's PostgreSQL side is not counted).

Example::

    .venv/bin/python -m bench.dbcost
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Awaitable, Callable

from bench.common import (
    cpu_seconds,
    fresh_database,
    markdown_table,
    wait_until_quiet,
)
from bench.hotloop import job_spec

ROWS: list[list[str]] = []


async def timed(name: str, n: int, fn: Callable[[], Awaitable[object]]) -> None:
    for _ in range(100):
        await fn()
    best = float("inf")
    for _ in range(3):
        start = cpu_seconds(os.getpid())
        for _ in range(n):
            await fn()
        best = min(best, (cpu_seconds(os.getpid()) - start) / n)
    ROWS.append([name, f"{best * 1e6:.0f}"])
    print(f"{best * 1e6:7.0f} us  {name}", flush=True)


async def run(url: str, n: int) -> None:
    import asyncpg
    from sqlalchemy import select, text, update
    from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

    from app import repository, service
    from app.config import Settings
    from app.database import open_database
    from app.models import BatchSize, Job, Trial
    from app.schemas import JobSpec, TrainingResult

    settings = Settings(database_url=url, log_level="WARNING")
    database = await open_database(settings)  # the service's own driver layer
    spec = JobSpec(**job_spec("cost-1", "cost", None))
    await service.register_job(database, spec, now=service.utcnow())
    trial = await service.dispatch_trial(database, "cost-1", now=service.utcnow())
    # The ORM rows below use SQLAlchemy's engine as the service configured it
    # before the rewrite (pool_pre_ping on, the lock timeout as a server setting).
    engine = create_async_engine(
        url,
        pool_pre_ping=True,
        connect_args={"server_settings": {"lock_timeout": str(settings.lock_timeout_ms)}},
    )
    sessions = async_sessionmaker(engine, expire_on_commit=False, autoflush=False)
    sql = "SELECT * FROM job WHERE job_id = $1"

    raw = await asyncpg.connect(url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await timed("raw asyncpg: SELECT job by PK", n, lambda: raw.fetchrow(sql, "cost-1"))

        async def raw_tx() -> None:
            async with raw.transaction():
                await raw.fetchrow(sql + " FOR UPDATE", "cost-1")

        await timed("raw asyncpg: BEGIN; SELECT job FOR UPDATE; COMMIT", n, raw_tx)
    finally:
        await raw.close()

    pool = await asyncpg.create_pool(
        url.replace("postgresql+asyncpg", "postgresql"), min_size=1, max_size=4
    )
    try:

        async def pool_tx() -> None:
            async with pool.acquire() as connection, connection.transaction():
                await connection.fetchrow(sql + " FOR UPDATE", "cost-1")

        await timed("asyncpg pool acquire/release + the same transaction", n, pool_tx)
    finally:
        await pool.close()

    async with engine.connect() as conn:
        driver = (await conn.get_raw_connection()).driver_connection
        assert driver is not None
        await timed(
            "SQLAlchemy pool's asyncpg connection (driver_connection): SELECT job",
            n,
            lambda: driver.fetchrow(sql, "cost-1"),
        )

        async def driver_sql() -> None:
            (await conn.exec_driver_sql(sql, ("cost-1",))).first()

        await timed("SQLAlchemy AsyncConnection.exec_driver_sql: SELECT job", n, driver_sql)
        table = Job.__table__

        async def core() -> None:
            (await conn.execute(select(table).where(table.c.job_id == "cost-1"))).first()

        await timed("SQLAlchemy Core select(table), compiled-cache hit: SELECT job", n, core)

    async def checkout_tx() -> None:
        async with engine.connect() as conn:
            driver = (await conn.get_raw_connection()).driver_connection
            assert driver is not None
            async with driver.transaction():
                await driver.fetchrow(sql + " FOR UPDATE", "cost-1")

    await timed(
        "SQLAlchemy pool checkout (pre-ping on, as configured) + asyncpg transaction",
        n,
        checkout_tx,
    )
    no_ping = create_async_engine(url, pool_pre_ping=False)
    no_ping_sessions = async_sessionmaker(no_ping, expire_on_commit=False, autoflush=False)
    async with no_ping_sessions() as session:

        async def orm_select() -> None:
            query = (
                select(Job)
                .where(Job.job_id == "cost-1")
                .with_for_update()
                .execution_options(populate_existing=True)
            )
            (await session.execute(query)).scalar_one()

        await timed("ORM AsyncSession: SELECT job FOR UPDATE -> Job", n, orm_select)

        async def orm_get() -> None:
            session.expunge_all()
            await session.get(Trial, ("cost-1", 1))

        await timed("ORM AsyncSession: session.get(Trial, pk), empty identity map", n, orm_get)

        async def orm_update() -> None:
            await session.execute(
                update(BatchSize)
                .where(BatchSize.job_id == "cost-1", BatchSize.batch_size == 64)
                .values(reward_count=0)
            )

        await timed("ORM-enabled UPDATE statement", n, orm_update)

        async def orm_flush() -> None:
            job = (await session.execute(select(Job).where(Job.job_id == "cost-1"))).scalar_one()
            job.updated_at = service.utcnow()
            await session.flush()

        await timed("ORM: SELECT job, change an attribute, flush (UPDATE)", n, orm_flush)
        await session.rollback()

    async def lifecycle(maker: object) -> None:
        async with maker() as session:  # type: ignore[operator]
            await session.execute(text("SELECT 1"))
            await session.rollback()

    await timed(
        "AsyncSession open, BEGIN, SELECT 1, ROLLBACK, close (pre-ping on, as configured)",
        n,
        lambda: lifecycle(sessions),
    )
    await timed("  the same with pool_pre_ping=False", n, lambda: lifecycle(no_ping_sessions))
    await no_ping.dispose()
    await engine.dispose()

    # What the request path does since the rewrite (app/database.py, app/repository.py).
    async def locked_frame() -> None:
        async with database.transaction() as conn:
            await repository.get_job(conn, "cost-1", for_update=True)

    await timed(
        "now: app.database transaction (pool acquire, BEGIN, COMMIT, release) "
        "+ repository.get_job FOR UPDATE -> JobRow",
        n,
        locked_frame,
    )

    async def lock_free_read() -> None:
        async with database.autocommit() as conn:
            await repository.get_job_and_trial(conn, "cost-1", trial.trial_number)

    await timed(
        "now: lock-free job JOIN trial -> JobRow, TrialRow (pool acquire/release included)",
        n,
        lock_free_read,
    )
    report = TrainingResult(
        job_id="cost-1",
        batch_size=trial.batch_size,
        trial_number=trial.trial_number,
        time=10.0,
        energy=2000.0,
        metric=0.1,
        current_epoch=1,
    )

    async def report_not_final() -> None:
        answer = await service.report_result(database, report, now=service.utcnow())
        assert not answer.stop_train

    await timed("now: service.report_result, not final (whole use case)", n, report_not_final)

    async def register_again() -> None:
        registration = await service.register_job(database, spec, now=service.utcnow())
        assert not registration.created

    await timed("now: service.register_job, already registered (whole use case)", n, register_again)
    await database.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="CPU microseconds per statement through raw asyncpg, SQLAlchemy Core and ORM.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=1000, help="calls per measurement")
    parser.add_argument("--quiet-wait", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.quiet_wait:
        wait_until_quiet(args.quiet_wait)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    with fresh_database("postgres") as url:
        runner(run(url, args.n))
    print()
    print(markdown_table(["path", "CPU us per call"], ROWS))


if __name__ == "__main__":
    main()
