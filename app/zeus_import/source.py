"""Reading a Zeus 0.16 batch size optimizer database (``bso import-zeus``'s source).

Zeus's tables are not ours, so they are declared here as SQLAlchemy Core
tables, column for column as ``zeus.optimizer.batch_size.server.database.schema``
creates them, rather than in app/store/tables.py (the repository layer owns our
schema only). Declared rather than reflected: the declared types turn what
each driver returns (MySQL's TINYINT booleans, PostgreSQL's native enums,
naive timestamps) into the same Python values. Reflection only checks that
the source has exactly these tables and columns before anything is read.

Nothing here writes: a SQLite source is even opened read-only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    inspect,
    select,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL, Connection, make_url
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

zeus_metadata = MetaData()

zeus_job = Table(
    "Job",
    zeus_metadata,
    Column("job_id", String(400), primary_key=True),
    Column("job_id_prefix", String(300)),
    Column("default_batch_size", Integer),
    Column("higher_is_better_metric", Boolean),
    Column("eta_knob", Float),
    Column("beta_knob", Float),
    Column("target_metric", Float),
    Column("max_epochs", Integer),
    Column("num_pruning_rounds", Integer),
    Column("window_size", Integer),
    Column("max_power", Float),
    Column("number_of_gpus", Integer),
    Column("gpu_model", String(30)),
    Column("mab_prior_mean", Float),
    Column("mab_prior_precision", Float),
    Column("mab_num_explorations", Integer),
    Column("mab_seed", Integer),
    Column("mab_random_generator_state", String(10000)),
    Column("exp_default_batch_size", Integer),
    Column("stage", String(7)),  # Zeus's Enum(Stage): the member names
    Column("min_cost", Float),
    Column("min_cost_batch_size", Integer),
)
zeus_batch_size = Table(
    "BatchSize",
    zeus_metadata,
    Column("job_id", String(400), primary_key=True),
    Column("batch_size", Integer, primary_key=True),
)
zeus_arm = Table(
    "GaussianTsArmState",
    zeus_metadata,
    Column("job_id", String(300), primary_key=True),
    Column("batch_size", Integer, primary_key=True),
    Column("param_mean", Float),
    Column("param_precision", Float),
    Column("reward_precision", Float),
    Column("num_observations", Integer),
)
zeus_trial = Table(
    "Trial",
    zeus_metadata,
    Column("job_id", String(300), primary_key=True),
    Column("batch_size", Integer),
    Column("trial_number", Integer, primary_key=True),
    Column("start_timestamp", DateTime),
    Column("type", String(11)),
    Column("status", String(10)),
    Column("end_timestamp", DateTime),
    Column("time", Float),
    Column("energy", Float),
    Column("converged", Boolean),
)
ZEUS_TABLES = (zeus_job, zeus_batch_size, zeus_arm, zeus_trial)


class SourceError(Exception):
    """The source cannot be imported at all: one line says why."""


# What Zeus deployments write in ZEUS_BSO_DATABASE_URL, and the async driver we read it with.
_DRIVERS = {
    "sqlite": "sqlite+aiosqlite",
    "postgres": "postgresql+asyncpg",
    "postgresql": "postgresql+asyncpg",
    "mysql": "mysql+aiomysql",
    "mariadb": "mysql+aiomysql",
}


def source_url(raw: str) -> URL:
    """The async-driver URL for a Zeus database URL, whatever driver it names.

    ``mysql+pymysql://...`` (Zeus's compose file), ``postgresql://...``,
    ``sqlite:///zeus.db``, and their async spellings all work. A SQLite file
    is opened read-only and must exist (never created by a typo).
    """
    try:
        url = make_url(raw.strip())
    except sa_exc.ArgumentError as exc:
        raise SourceError(f"not a database URL: {raw!r}") from exc
    backend = url.get_backend_name()
    driver = _DRIVERS.get(backend)
    if driver is None:
        raise SourceError(
            f"unsupported source database {backend!r}: Zeus runs on SQLite, PostgreSQL or MySQL"
        )
    url = url.set(drivername=driver)
    if backend == "sqlite":
        if not url.database or url.database == ":memory:":
            raise SourceError("a SQLite source must be a file: sqlite:///path/to/zeus.db")
        if not Path(url.database).is_file():
            raise SourceError(f"cannot reach the source database {raw.strip()}: no such file")
        url = url.set(database=f"file:{url.database}", query={"mode": "ro", "uri": "true"})
    return url


def shown(url: URL) -> str:
    """The URL for messages: its password hidden, a SQLite file as the operator named it."""
    if url.get_backend_name() == "sqlite":
        return f"sqlite:///{(url.database or '').removeprefix('file:')}"
    return url.render_as_string(hide_password=True)


@dataclass(frozen=True, slots=True)
class ZeusJob:
    """One Zeus job as its four tables hold it; trials in trial-number order."""

    job: Mapping[str, Any]
    batch_sizes: tuple[int, ...]
    trials: tuple[Mapping[str, Any], ...]
    arms: tuple[Mapping[str, Any], ...]

    @property
    def job_id(self) -> str:
        return str(self.job["job_id"])


def _shape_problem(sync: Connection) -> str | None:
    """Why the source is not a Zeus 0.16 BSO schema, or None if it is one."""
    inspector = inspect(sync)
    present = set(inspector.get_table_names())
    wanted = [t.name for t in ZEUS_TABLES]
    if not present & set(wanted):
        return "not a Zeus batch size optimizer database: it has none of the tables " + ", ".join(
            wanted
        )
    problems = []
    for table in ZEUS_TABLES:
        if table.name not in present:
            problems.append(f"table {table.name} is missing")
            continue
        columns = {c["name"] for c in inspector.get_columns(table.name)}
        if missing := [c.name for c in table.c if c.name not in columns]:
            problems.append(f"table {table.name} lacks {', '.join(missing)}")
        if extra := sorted(columns - {c.name for c in table.c}):
            problems.append(f"table {table.name} has unknown columns {', '.join(extra)}")
    if not problems:
        return None
    return "a Zeus schema of an unknown shape (this importer reads Zeus 0.16's): " + "; ".join(
        problems
    )


@asynccontextmanager
async def open_source(url: URL) -> AsyncIterator[AsyncConnection]:
    """A connection to a checked Zeus source, in one read transaction.

    One snapshot on PostgreSQL (REPEATABLE READ, MySQL's default), so that
    every job is read as of one moment even if the Zeus server still runs.

    Raises:
        SourceError: unreachable, or not a Zeus 0.16 schema.
    """
    snapshot = {"isolation_level": "REPEATABLE READ"} if url.get_backend_name() != "sqlite" else {}
    engine = create_async_engine(url, poolclass=NullPool, **snapshot)
    try:
        try:
            conn = await engine.connect()
        except (sa_exc.DBAPIError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "orig", None) or exc
            raise SourceError(f"cannot reach the source database {shown(url)}: {reason}") from exc
        try:
            try:
                problem = await conn.run_sync(_shape_problem)
            except sa_exc.DBAPIError as exc:
                raise SourceError(
                    f"cannot read the source database {shown(url)}: {exc.orig}"
                ) from exc
            if problem is not None:
                raise SourceError(f"{shown(url)} is {problem}")
            yield conn
        finally:
            await conn.close()
    finally:
        await engine.dispose()


async def job_ids(conn: AsyncConnection) -> list[str]:
    """Every job of the source, in job_id order."""
    return [
        r.job_id for r in await conn.execute(select(zeus_job.c.job_id).order_by(zeus_job.c.job_id))
    ]


async def read_job(conn: AsyncConnection, job_id: str) -> ZeusJob:
    """One job with its batch sizes, trials and arms."""
    job_row = (await conn.execute(select(zeus_job).where(zeus_job.c.job_id == job_id))).one()
    batch_sizes = await conn.execute(
        select(zeus_batch_size.c.batch_size)
        .where(zeus_batch_size.c.job_id == job_id)
        .order_by(zeus_batch_size.c.batch_size)
    )
    trials = await conn.execute(
        select(zeus_trial).where(zeus_trial.c.job_id == job_id).order_by(zeus_trial.c.trial_number)
    )
    arms = await conn.execute(
        select(zeus_arm).where(zeus_arm.c.job_id == job_id).order_by(zeus_arm.c.batch_size)
    )
    return ZeusJob(
        dict(job_row._mapping),
        tuple(r.batch_size for r in batch_sizes),
        tuple(dict(r._mapping) for r in trials),
        tuple(dict(r._mapping) for r in arms),
    )
