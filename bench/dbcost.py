"""CPU cost of one database call through each layer, in-process, on PostgreSQL.

Not an HTTP benchmark: it explains the hot loop's numbers. The same primary-key
lookup of a job row goes through raw asyncpg, then through SQLAlchemy's
layers (driver-level SQL, Core ``select`` with a compiled-cache hit); then
the per-request frames of the service (app/store/engine.py's engine: ``engine.begin()``
with the row lock, an AUTOCOMMIT connection for lock-free reads, a bare pool
checkout) with app/store's statements; and last, whole use cases of
app/service.py that the hot loop calls most. Reports the best of 3 runs of
``--n`` calls, in microseconds of this process's CPU per call (the round
trip's PostgreSQL side is not counted).

The ORM rows of earlier versions are gone: the request path never used the
ORM after 162554f, and the driver layer they were compared with (app/database.py)
is deleted. For the driver path's own numbers run this file's version at
1b1cd18 from a checkout of that commit (``.venv/bin/python bench/dbcost.py``).

Example::

    .venv/bin/python -m bench.dbcost
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

from bench.hotloop import job_spec
from bench.load import wait_until_quiet
from bench.reporting import markdown_table
from bench.servers import fresh_database

ROWS: list[list[str]] = []


async def timed(name: str, n: int, fn: Callable[[], Awaitable[object]]) -> None:
    for _ in range(100):
        await fn()
    best = float("inf")
    for _ in range(3):
        start = time.process_time()
        for _ in range(n):
            await fn()
        best = min(best, (time.process_time() - start) / n)
    ROWS.append([name, f"{best * 1e6:.0f}"])
    print(f"{best * 1e6:7.0f} us  {name}", flush=True)


async def run(url: str, n: int) -> None:
    import asyncpg
    from sqlalchemy import select, text

    from app import service
    from app.config import Settings
    from app.schemas import JobSpec, TrainingResult, TrialId
    from app.store import jobs, trials
    from app.store.engine import create_engine, in_transaction, lock_free
    from app.store.tables import job

    settings = Settings(database_url=url, log_level="WARNING")
    engine = create_engine(settings)  # the service's engine, configured as it serves
    spec = JobSpec(**job_spec("cost-1", "cost", None))
    await service.register_job(engine, spec, now=service.utcnow())
    trial = await service.dispatch_trial(engine, "cost-1", now=service.utcnow())
    ended = await service.dispatch_trial(engine, "cost-1", now=service.utcnow())
    await service.end_trial(engine, ended, now=service.utcnow())
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

        core_select = select(job).where(job.c.job_id == "cost-1")

        async def core() -> None:
            (await conn.execute(core_select)).first()

        await timed("SQLAlchemy Core select(job), compiled-cache hit: SELECT job", n, core)
        await conn.rollback()

    async def checkout() -> None:
        async with engine.connect() as conn:
            await conn.exec_driver_sql("SELECT 1")

    await timed("engine.connect() (pool checkout/checkin) + exec_driver_sql SELECT 1", n, checkout)

    async def begin_only() -> None:
        async with engine.begin() as conn:
            await conn.execute(text("SELECT 1"))

    await timed("engine.begin(): BEGIN; SELECT 1; COMMIT (checkout included)", n, begin_only)

    async def locked_frame() -> None:
        await in_transaction(engine, jobs.lock_job, "cost-1")

    await timed(
        "now: in_transaction(engine, jobs.lock_job) (job FOR UPDATE JOIN batch sizes)",
        n,
        locked_frame,
    )

    async def lock_free_read() -> None:
        await lock_free(engine, trials.load_trial, "cost-1", trial.trial_number)

    await timed(
        "now: lock_free(engine, trials.load_trial) (job, trial, stats, arm: one read)",
        n,
        lock_free_read,
    )

    async def load_job() -> None:
        await lock_free(engine, jobs.load_job, "cost-1")

    await timed("now: lock_free(engine, jobs.load_job) (job, batch sizes, arms)", n, load_job)
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
        answer = await service.report_result(engine, report, now=service.utcnow())
        assert not answer.stop_train

    await timed("now: service.report_result, not final (whole use case)", n, report_not_final)

    async def register_again() -> None:
        registration = await service.register_job(engine, spec, now=service.utcnow())
        assert not registration.created

    await timed("now: service.register_job, already registered (whole use case)", n, register_again)
    ended_id = TrialId(
        job_id="cost-1", batch_size=ended.batch_size, trial_number=ended.trial_number
    )

    async def end_again() -> None:
        await service.end_trial(engine, ended_id, now=service.utcnow())

    await timed("now: service.end_trial of an ended trial (whole use case)", n, end_again)

    # A dispatch with a new Idempotency-Key looks it up first (one more statement);
    # a repeat answers from that lookup. Two jobs alike, so both grow the same.
    for job_id in ("cost-plain", "cost-keyed"):
        await service.register_job(engine, JobSpec(**job_spec(job_id, "cost", None)),
                                   now=service.utcnow())  # fmt: skip

    async def dispatch(job_id: str, key: str | None) -> None:
        await service.dispatch_trial(engine, job_id, now=service.utcnow(), idempotency_key=key)

    keys = iter(range(10**9))
    await timed("now: service.dispatch_trial, no key (whole use case)", n,
                lambda: dispatch("cost-plain", None))  # fmt: skip
    await timed("now: service.dispatch_trial, a new Idempotency-Key (whole use case)", n,
                lambda: dispatch("cost-keyed", f"key-{next(keys)}"))  # fmt: skip
    await timed("now: service.dispatch_trial, a repeated Idempotency-Key (whole use case)", n,
                lambda: dispatch("cost-keyed", "key-0"))  # fmt: skip
    await engine.dispose()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="CPU microseconds per call through raw asyncpg, SQLAlchemy and the service.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=1000, help="calls per measurement")
    parser.add_argument("--quiet-wait", type=float, default=60.0)
    args = parser.parse_args(argv)
    if args.quiet_wait:
        wait_until_quiet(args.quiet_wait)
    with fresh_database("postgres") as url:
        try:
            import uvloop
        except ImportError:
            asyncio.run(run(url, args.n))
        else:
            uvloop.run(run(url, args.n))
    print()
    print(markdown_table(["path", "CPU us per call"], ROWS))


if __name__ == "__main__":
    main()
