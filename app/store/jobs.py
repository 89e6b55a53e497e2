"""Jobs and their batch sizes: register, read, lock, list, delete.

:func:`lock_job` locks the job row until the transaction ends, which
serialises every request that changes a job across workers and replicas
(SPEC 7). SQLite has no row locks and ignores the clause: there ``BEGIN
IMMEDIATE`` (app/store/engine.py) serialises writers.
"""

from __future__ import annotations

import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Select, bindparam, delete, func, insert, select, update
from sqlalchemy.engine import Connection

from app.bandit import ArmPosterior, JobParams, TrialStatus
from app.store.arms import insert_arms
from app.store.rows import NOW, JobRow, insert_if_absent, job_params, page
from app.store.tables import batch_size, job, trial


@dataclass(frozen=True, slots=True)
class JobState:
    """A job with its batch sizes and arms, as one read returns them."""

    job: JobRow
    batch_sizes: tuple[int, ...]
    arms: tuple[ArmPosterior, ...]  # ascending, when read (empty while pruning)
    # The oldest lease renewal of the job's running trials (None: none runs);
    # read by lock_job only. See _OLDEST_LEASE.
    oldest_lease: datetime | None = None

    def may_have_lapsed(self, renewed_before: datetime) -> bool:
        """Whether a running trial may have been renewed last before ``renewed_before``."""
        return self.oldest_lease is not None and self.oldest_lease < renewed_before

    @property
    def params(self) -> JobParams:
        return job_params(self.job, self.batch_sizes)


# One row per job: its batch sizes in one column (PostgreSQL: an array,
# SQLite: "16,32,64"), not one row per batch size that repeats every column
# of the job (rng_state's JSON included) for the driver to decode again.
_BATCH_SIZES = {
    "postgresql": select(func.array_agg(batch_size.c.batch_size)),
    "sqlite": select(func.group_concat(batch_size.c.batch_size)),
}
_JOB_AND_BATCH_SIZES = {
    dialect: select(
        job,
        sizes.where(batch_size.c.job_id == job.c.job_id).scalar_subquery().label("batch_sizes"),
    ).where(job.c.job_id == bindparam("job_id"))
    for dialect, sizes in _BATCH_SIZES.items()
}
# Locked, a statement sees the job row as the lock holder left it, but the
# rows it reads besides as they were when it started (PostgreSQL, READ
# COMMITTED): a locked read reads besides only what never changes (the batch
# sizes), and what may have changed meanwhile is read by the next statement.
#
# One exception, on purpose: the oldest lease renewal of the job's running
# trials, so that a dispatch expires lapsed trials (one more round trip) only
# when there may be one. An older view of it never hides a lapsed trial: a
# renewal only moves later, a trial ended meanwhile only makes the expiry
# find nothing, and a trial dispatched meanwhile is not lapsed.
_OLDEST_LEASE = (
    select(func.min(trial.c.lease_renewed_at))
    .where(
        trial.c.job_id == bindparam("job_id"),
        trial.c.status == TrialStatus.DISPATCHED.value,
    )
    .scalar_subquery()
    .label("oldest_lease")
)
_JOB_LOCKED = {
    dialect: statement.add_columns(_OLDEST_LEASE).with_for_update(of=job)
    for dialect, statement in _JOB_AND_BATCH_SIZES.items()
}


def _job_state(
    conn: Connection, statements: Mapping[str, Select[Any]], job_id: str, *, leases: bool = False
) -> JobState | None:
    row = conn.execute(statements[conn.dialect.name], {"job_id": job_id}).first()
    if row is None:
        return None
    sizes = row.batch_sizes or ()
    if isinstance(sizes, str):  # SQLite's group_concat
        sizes = [int(size) for size in sizes.split(",")]
    oldest = row.oldest_lease if leases else None
    return JobState(row, tuple(sorted(sizes)), (), oldest)


def load_job(conn: Connection, job_id: str) -> JobState | None:
    """A job and its batch sizes in one round trip (not its arms: see :func:`arms`)."""
    return _job_state(conn, _JOB_AND_BATCH_SIZES, job_id)


def lock_job(conn: Connection, job_id: str) -> JobState | None:
    """Lock a job's row until the transaction ends; the job, its batch sizes, its oldest lease."""
    return _job_state(conn, _JOB_LOCKED, job_id, leases=True)


_LOCK_JOB_ROW = select(job.c.job_id).where(job.c.job_id == bindparam("job_id")).with_for_update()


def lock_job_row(conn: Connection, job_id: str) -> bool:
    """Lock a job's row until the transaction ends; False if there is no such job."""
    return (conn.execute(_LOCK_JOB_ROW, {"job_id": job_id})).first() is not None


_JOB_EXISTS = select(job.c.job_id).where(job.c.job_id == bindparam("job_id"))


def job_exists(conn: Connection, job_id: str) -> bool:
    return (conn.execute(_JOB_EXISTS, {"job_id": job_id})).first() is not None


_INSERT_JOB = insert_if_absent(job, job.c.job_id)


def insert_job_if_absent(
    conn: Connection, values: Mapping[str, Any], batch_sizes: Sequence[int]
) -> bool:
    """Insert a job and its batch sizes unless the job_id exists; True if inserted.

    ON CONFLICT DO NOTHING rather than select-then-insert: two concurrent
    registrations of one id cannot both insert (the second waits for the
    first to commit, then does nothing), and different ids never wait.
    """
    statement = _INSERT_JOB[conn.dialect.name]
    if (conn.execute(statement, dict(values))).first() is None:
        return False
    conn.execute(
        insert(batch_size),
        [
            {"job_id": values["job_id"], "batch_size": bs, "reward_count": 0,
             "reward_mean": 0.0, "reward_m2": 0.0}
            for bs in batch_sizes
        ],
    )  # fmt: skip
    return True


def insert_imported_job(
    conn: Connection,
    values: Mapping[str, Any],
    batch_sizes: Sequence[Mapping[str, Any]],
    trials: Sequence[Mapping[str, Any]],
    arms: Sequence[ArmPosterior],
) -> bool:
    """Insert a whole job as ``bso import-zeus`` maps it; False if the job_id exists.

    Its batch sizes come with their running statistics, its trials with
    their results and leases, its arms as fitted (app/zeus_import/mapping.py).
    """
    if (conn.execute(_INSERT_JOB[conn.dialect.name], dict(values))).first() is None:
        return False
    conn.execute(insert(batch_size), [dict(b) for b in batch_sizes])
    if trials:
        conn.execute(insert(trial), [dict(t) for t in trials])
    if arms:
        insert_arms(conn, values["job_id"], arms)
    return True


_DELETE_JOB = delete(job).where(job.c.job_id == bindparam("job_id"))


def delete_job(conn: Connection, job_id: str) -> bool:
    """Delete a job; its batch sizes, trials and arms go by cascade."""
    return (conn.execute(_DELETE_JOB, {"job_id": job_id})).rowcount > 0


def list_jobs(
    conn: Connection, *, prefix: str | None, after: str | None, limit: int
) -> list[JobRow]:
    # ix_job_job_id_prefix with a prefix, the primary key without.
    statement = page(
        select(job).order_by(job.c.job_id).limit(limit),
        (job.c.job_id_prefix, operator.eq, prefix),
        (job.c.job_id, operator.gt, after),
    )
    return list((conn.execute(statement)).all())


_TOUCH_JOB = update(job).where(job.c.job_id == bindparam("k_job_id")).values(updated_at=NOW)


def touch_job(conn: Connection, job_id: str, now: datetime) -> None:
    conn.execute(_TOUCH_JOB, {"k_job_id": job_id, "now": now})
