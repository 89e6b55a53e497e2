"""The only module that knows SQL: statements built once from the tables (models.py).

Every statement is bounded by the job's configuration, never by its history:
lookups by primary key (a job comes with its at most 256 batch sizes and
arms), the pruning walk's non-Failed explorations (at most rounds x batch
sizes rows), the last ``window_size`` results of one batch size, and keyset
pages. Each one has an index (models.py).

:func:`lock_job` locks the job row until the transaction ends, which
serialises every request that changes a job across workers and replicas
(SPEC 7). SQLite has no row locks and ignores the clause: there ``BEGIN
IMMEDIATE`` (app/db.py) serialises writers.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Column,
    Float,
    Integer,
    Row,
    RowMapping,
    Select,
    String,
    Table,
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from app.bandit import (
    ArmPosterior,
    Exploration,
    FailureReason,
    GroupBatchSize,
    GroupKnowledge,
    JobParams,
    LastReport,
    Lease,
    Policy,
    RewardStats,
    Stage,
    TrialStatus,
    TrialType,
)
from app.models import (
    UTCDateTime,
    arm,
    batch_size,
    group_batch_size,
    job,
    job_group,
    token,
    trial,
)
from app.schemas import TrialRead

JobRow = Row[Any]  # a row of the job table (attributes named as its columns)

_PARAM_FIELDS = tuple(f.name for f in fields(JobParams) if f.name != "batch_sizes")


def job_params(row: JobRow, batch_sizes: Sequence[int] = ()) -> JobParams:
    """The algorithm's view of a job."""
    return JobParams(batch_sizes=tuple(batch_sizes), **{f: getattr(row, f) for f in _PARAM_FIELDS})


# The predictive policy's bookkeeping is not part of the read API.
_TRIAL_READ_COLUMNS = tuple(
    c.name
    for c in trial.c
    if c.name not in {"lease_renewed_at", "pruning_round", "last_epoch", "last_cost"}
)


def _trial_read(mapping: RowMapping, prefix: str = "", lease: Lease | None = None) -> TrialRead:
    """A trial row as the read API shows it; with ``lease``, a running one's expiry."""
    values = {name: mapping[prefix + name] for name in _TRIAL_READ_COLUMNS}
    if lease is not None and values["status"] == TrialStatus.DISPATCHED:
        values["lease_expires_at"] = lease.expires_at(mapping[prefix + "lease_renewed_at"])
    return TrialRead.model_construct(**values)


def _arm(mapping: RowMapping) -> ArmPosterior:
    return ArmPosterior(
        mapping["batch_size"],
        mapping["param_mean"],
        mapping["param_precision"],
        mapping["reward_precision"],
        mapping["num_observations"],
    )


# -------------------------------------------------------------------- jobs


@dataclass(frozen=True, slots=True)
class JobState:
    """A job with its batch sizes and arms, as one read returns them."""

    job: JobRow
    batch_sizes: tuple[int, ...]
    arms: tuple[ArmPosterior, ...]  # ascending, when read (empty while pruning)

    @property
    def params(self) -> JobParams:
        return job_params(self.job, self.batch_sizes)


_ARM_VALUES = (
    arm.c.param_mean,
    arm.c.param_precision,
    arm.c.reward_precision,
    arm.c.num_observations,
)
_JOB_AND_BATCH_SIZES = (
    select(job, batch_size.c.batch_size)
    .join_from(job, batch_size, batch_size.c.job_id == job.c.job_id)
    .where(job.c.job_id == bindparam("job_id"))
    .order_by(batch_size.c.batch_size)
)
# Locked, a statement sees the job row as the lock holder left it, but the
# rows it joins as they were when it started (PostgreSQL, READ COMMITTED): a
# locked read joins only what never changes (the batch sizes), and what may
# have changed meanwhile is read by the next statement.
_JOB_LOCKED = _JOB_AND_BATCH_SIZES.with_for_update(of=job)
_ARMS = (
    select(arm.c.batch_size, *_ARM_VALUES)
    .where(arm.c.job_id == bindparam("job_id"))
    .order_by(arm.c.batch_size)
)


async def _job_state(conn: AsyncConnection, statement: Select[Any], job_id: str) -> JobState | None:
    rows = (await conn.execute(statement, {"job_id": job_id})).all()
    if not rows:
        return None
    return JobState(rows[0], tuple(r.batch_size for r in rows), ())


async def load_job(conn: AsyncConnection, job_id: str) -> JobState | None:
    """A job and its batch sizes in one round trip (not its arms: see :func:`arms`)."""
    return await _job_state(conn, _JOB_AND_BATCH_SIZES, job_id)


async def lock_job(conn: AsyncConnection, job_id: str) -> JobState | None:
    """Lock a job's row until the transaction ends; the job and its batch sizes."""
    return await _job_state(conn, _JOB_LOCKED, job_id)


_LOCK_JOB_ROW = select(job.c.job_id).where(job.c.job_id == bindparam("job_id")).with_for_update()


async def lock_job_row(conn: AsyncConnection, job_id: str) -> bool:
    """Lock a job's row until the transaction ends; False if there is no such job."""
    return (await conn.execute(_LOCK_JOB_ROW, {"job_id": job_id})).first() is not None


async def arms(conn: AsyncConnection, job_id: str) -> tuple[ArmPosterior, ...]:
    """A job's arms, ascending."""
    return tuple(_arm(r._mapping) for r in await conn.execute(_ARMS, {"job_id": job_id}))


_JOB_EXISTS = select(job.c.job_id).where(job.c.job_id == bindparam("job_id"))


async def job_exists(conn: AsyncConnection, job_id: str) -> bool:
    return (await conn.execute(_JOB_EXISTS, {"job_id": job_id})).first() is not None


def _insert_if_absent(table: Table, key: Column[Any] | None = None) -> dict[str, Any]:
    """``INSERT ... ON CONFLICT DO NOTHING [RETURNING key]`` in each dialect's spelling."""
    statements = {
        dialect.__name__.rsplit(".", 1)[-1]: dialect.insert(table).on_conflict_do_nothing()
        for dialect in (postgresql, sqlite)
    }
    if key is None:
        return statements
    return {name: statement.returning(key) for name, statement in statements.items()}


_INSERT_JOB = _insert_if_absent(job, job.c.job_id)


async def insert_job_if_absent(
    conn: AsyncConnection, values: Mapping[str, Any], batch_sizes: Sequence[int]
) -> bool:
    """Insert a job and its batch sizes unless the job_id exists; True if inserted.

    ON CONFLICT DO NOTHING rather than select-then-insert: two concurrent
    registrations of one id cannot both insert (the second waits for the
    first to commit, then does nothing), and different ids never wait.
    """
    statement = _INSERT_JOB[conn.dialect.name]
    if (await conn.execute(statement, dict(values))).first() is None:
        return False
    await conn.execute(
        insert(batch_size),
        [
            {"job_id": values["job_id"], "batch_size": bs, "reward_count": 0,
             "reward_mean": 0.0, "reward_m2": 0.0}
            for bs in batch_sizes
        ],
    )  # fmt: skip
    return True


async def insert_imported_job(
    conn: AsyncConnection,
    values: Mapping[str, Any],
    batch_sizes: Sequence[Mapping[str, Any]],
    trials: Sequence[Mapping[str, Any]],
    arms: Sequence[ArmPosterior],
) -> bool:
    """Insert a whole job as ``bso import-zeus`` maps it; False if the job_id exists.

    Its batch sizes come with their running statistics, its trials with
    their results and leases, its arms as fitted (app/zeus_import.py).
    """
    if (await conn.execute(_INSERT_JOB[conn.dialect.name], dict(values))).first() is None:
        return False
    await conn.execute(insert(batch_size), [dict(b) for b in batch_sizes])
    if trials:
        await conn.execute(insert(trial), [dict(t) for t in trials])
    if arms:
        await insert_arms(conn, values["job_id"], arms)
    return True


_DELETE_JOB = delete(job).where(job.c.job_id == bindparam("job_id"))


async def delete_job(conn: AsyncConnection, job_id: str) -> bool:
    """Delete a job; its batch sizes, trials and arms go by cascade."""
    return (await conn.execute(_DELETE_JOB, {"job_id": job_id})).rowcount > 0


def _page(statement: Select[Any], *filters: tuple[Any, Any, Any]) -> Select[Any]:
    """Only the filters ``(column, operator, value)`` whose value is given.

    Each shape then uses its own index instead of an OR-IS-NULL scan.
    """
    for column, compare, value in filters:
        if value is not None:
            statement = statement.where(compare(column, value))
    return statement


async def list_jobs(
    conn: AsyncConnection, *, prefix: str | None, after: str | None, limit: int
) -> list[JobRow]:
    # ix_job_job_id_prefix with a prefix, the primary key without.
    statement = _page(
        select(job).order_by(job.c.job_id).limit(limit),
        (job.c.job_id_prefix, operator.eq, prefix),
        (job.c.job_id, operator.gt, after),
    )
    return list((await conn.execute(statement)).all())


# ------------------------------------------------------------------ tokens

TokenRow = Row[Any]  # a row of the token table

# Any conflict (the name, or on a rare collision the random id): nothing inserted.
_INSERT_TOKEN = _insert_if_absent(token, token.c.token_id)
_TOKEN_BY_ID = select(token).where(token.c.token_id == bindparam("token_id"))
_TOKEN_BY_NAME = select(token).where(token.c.name == bindparam("name"))
_REVOKE_TOKEN = (
    update(token)
    .where(token.c.name == bindparam("k_name"), token.c.revoked_at.is_(None))
    .values(revoked_at=bindparam("now", type_=UTCDateTime()))
)


async def insert_token(conn: AsyncConnection, values: Mapping[str, Any]) -> bool:
    """Insert a token row; False if its name or id is taken."""
    statement = _INSERT_TOKEN[conn.dialect.name]
    return (await conn.execute(statement, dict(values))).first() is not None


async def token_by_id(conn: AsyncConnection, token_id: str) -> TokenRow | None:
    """The one row a presented token names (its primary key): the request path's lookup."""
    return (await conn.execute(_TOKEN_BY_ID, {"token_id": token_id})).first()


async def token_by_name(conn: AsyncConnection, name: str) -> TokenRow | None:
    return (await conn.execute(_TOKEN_BY_NAME, {"name": name})).first()


async def list_tokens(conn: AsyncConnection) -> list[TokenRow]:
    return list((await conn.execute(select(token).order_by(token.c.name))).all())


async def revoke_token(conn: AsyncConnection, name: str, now: datetime) -> bool:
    """Mark a live token revoked; False if there is no live token of that name."""
    return (await conn.execute(_REVOKE_TOKEN, {"k_name": name, "now": now})).rowcount > 0


# ------------------------------------------------------------------ trials

# Key parameters are named k_*: a column's own name is reserved in UPDATE ... SET.
_KEY = and_(trial.c.job_id == bindparam("k_job_id"), trial.c.trial_number == bindparam("k_number"))
_NOW = bindparam("now", type_=UTCDateTime())

# Dispatch: the job's counter and stage move, and the trial is inserted.
_BUMP_JOB = (
    update(job)
    .where(job.c.job_id == bindparam("k_job_id"))
    .values(
        next_trial_number=bindparam("next_trial_number"),
        stage=bindparam("stage"),
        rng_state=bindparam("rng_state"),
        start_batch_size=bindparam("start_batch_size"),
        updated_at=_NOW,
    )
)
_NEW_TRIAL: dict[str, Any] = {
    "job_id": bindparam("k_job_id", type_=String),
    "trial_number": bindparam("k_number", type_=Integer),
    "batch_size": bindparam("batch_size", type_=Integer),
    "type": bindparam("type", type_=String),
    "status": literal(TrialStatus.DISPATCHED.value),
    "start_timestamp": _NOW,
    "lease_renewed_at": _NOW,
    "pruning_round": bindparam("pruning_round", type_=Integer),
}
_INSERT_TRIAL = insert(trial).values(_NEW_TRIAL)
# PostgreSQL runs both in one statement (a data-modifying CTE); SQLite has none.
_bumped = _BUMP_JOB.returning(job.c.job_id).cte("bumped")
_BUMP_AND_INSERT = (
    insert(trial)
    .from_select(
        list(_NEW_TRIAL),
        select(*{**_NEW_TRIAL, "job_id": _bumped.c.job_id}.values()),
    )
    .add_cte(_bumped)
)


async def add_trial(
    conn: AsyncConnection,
    state: JobRow,
    *,
    number: int,
    batch_size: int,
    trial_type: TrialType,
    stage: Stage,
    rng_state: dict[str, Any] | None,
    now: datetime,
    pruning_round: int | None = None,
    start_batch_size: int | None = None,
) -> None:
    """Record a dispatched trial and advance the job's counter past it."""
    values = {
        "start_batch_size": start_batch_size,
        "k_job_id": state.job_id,
        "k_number": number,
        "next_trial_number": number + 1,
        "batch_size": batch_size,
        "type": trial_type.value,
        "stage": stage.value,
        "rng_state": rng_state,
        "now": now,
        "pruning_round": pruning_round,
    }
    if conn.dialect.name == "postgresql":
        await conn.execute(_BUMP_AND_INSERT, values)
    else:
        await conn.execute(_BUMP_JOB, values)
        await conn.execute(_INSERT_TRIAL, values)


@dataclass(frozen=True, slots=True)
class TrialState:
    """A job, one of its trials, and what a final report of it needs."""

    job: JobRow  # the job's columns that reports need
    trial: TrialRead | None
    stats: RewardStats  # the trial's batch size's running statistics
    is_arm: bool  # the trial's batch size is an arm of the job
    lease_renewed_at: datetime | None = None  # as read, before any renewal by this read
    renewed: bool = False  # this read renewed the trial's lease
    # What the predictive policy reads (SPEC 10); empty or None for a zeus job.
    pruning_round: int | None = None  # the trial's, if an exploration
    last_report: LastReport | None = None  # the trial's previous report
    min_converged_epochs: int | None = None  # of the trial's batch size
    fewest_epochs: Mapping[int, int] = field(default_factory=dict)  # predictive: batch sizes >= it


# What judging and recording a report read of the job (not its timestamps,
# counters or generator state), and its prefix, which a trainer's token is
# checked against (app/service.py).
_JOB_FOR_REPORTS = [
    job.c[name]
    for name in (
        "job_id",
        "job_id_prefix",
        "stage",
        "min_cost",
        "min_cost_batch_size",
        "group",
        *_PARAM_FIELDS,
    )
]
# A predictive job's report also needs the fewest epochs of converged trials
# of the batch sizes at least the trial's (app.bandit.epochs_needed): one row
# each, joined only for such a job, so a zeus job's read is one row as before.
_converged = batch_size.alias("converged")
_TRIAL_STATE = (
    select(
        *_JOB_FOR_REPORTS,
        *[c.label(f"t_{c.name}") for c in trial.c],
        batch_size.c.reward_count,
        batch_size.c.reward_mean,
        batch_size.c.reward_m2,
        batch_size.c.min_converged_epochs,
        arm.c.batch_size.label("arm_batch_size"),
        _converged.c.batch_size.label("c_batch_size"),
        _converged.c.min_converged_epochs.label("c_epochs"),
    )
    .select_from(
        job.outerjoin(
            trial,
            and_(trial.c.job_id == job.c.job_id, trial.c.trial_number == bindparam("k_number")),
        )
        .outerjoin(
            batch_size,
            and_(
                batch_size.c.job_id == trial.c.job_id, batch_size.c.batch_size == trial.c.batch_size
            ),
        )
        .outerjoin(
            arm, and_(arm.c.job_id == trial.c.job_id, arm.c.batch_size == trial.c.batch_size)
        )
        .outerjoin(
            _converged,
            and_(
                job.c.policy == Policy.PREDICTIVE.value,
                _converged.c.job_id == trial.c.job_id,
                _converged.c.batch_size >= trial.c.batch_size,
                _converged.c.min_converged_epochs.is_not(None),
            ),
        )
    )
    .where(job.c.job_id == bindparam("k_job_id"))
)

# A report renews its trial's lease when the stored renewal is old enough:
# one row by primary key, no job lock (it changes nothing a decision reads).
_RENEW_LEASE = (
    update(trial)
    .where(
        _KEY,
        trial.c.batch_size == bindparam("k_batch_size"),
        trial.c.status == TrialStatus.DISPATCHED.value,
        trial.c.lease_renewed_at <= bindparam("renew_before", type_=UTCDateTime()),
    )
    .values(lease_renewed_at=_NOW)
)
# PostgreSQL folds the renewal into the read: one round trip. The read sees
# the row as it was before the renewal (one snapshot per statement).
_renewed = _RENEW_LEASE.returning(trial.c.trial_number).cte("renewed")
_TRIAL_STATE_RENEWING = _TRIAL_STATE.add_columns(
    select(func.count()).select_from(_renewed).scalar_subquery().label("renewed")
).add_cte(_renewed)


@dataclass(frozen=True, slots=True)
class Renewal:
    """Renew the lease of the trial read if it is last renewed at or before ``before``."""

    batch_size: int
    before: datetime
    now: datetime


async def load_trial(
    conn: AsyncConnection, job_id: str, trial_number: int, *, renew: Renewal | None = None
) -> TrialState | None:
    """A job and one of its trials in one round trip; None if there is no such job.

    With ``renew``, a Dispatched trial of that batch size whose lease was last
    renewed at or before ``renew.before`` gets its lease renewed to
    ``renew.now``, in the same statement on PostgreSQL. ``renewed`` says
    whether it was; the state is as read before the renewal.

    Under the job's lock, call it after :func:`lock_job`: a locked read of
    this join could see the trial as it was before the lock holder ended it.
    """
    values: dict[str, Any] = {"k_job_id": job_id, "k_number": trial_number}
    folded = renew is not None and conn.dialect.name == "postgresql"
    if renew is not None:
        values |= {"k_batch_size": renew.batch_size, "renew_before": renew.before,
                   "now": renew.now}  # fmt: skip
    statement = _TRIAL_STATE_RENEWING if folded else _TRIAL_STATE
    rows = (await conn.execute(statement, values)).all()
    if not rows:
        return None
    row = rows[0]
    found = None if row.t_trial_number is None else _trial_read(row._mapping, "t_")
    renewed = bool(row.renewed) if folded else False
    if renew is not None and not folded and found is not None:
        due = (
            found.status == TrialStatus.DISPATCHED
            and found.batch_size == renew.batch_size
            and row.t_lease_renewed_at <= renew.before
        )
        renewed = due and (await conn.execute(_RENEW_LEASE, values)).rowcount > 0
    stats = RewardStats(row.reward_count or 0, row.reward_mean or 0.0, row.reward_m2 or 0.0)
    last = None if row.t_last_epoch is None else LastReport(row.t_last_epoch, row.t_last_cost)
    fewest = {r.c_batch_size: r.c_epochs for r in rows if r.c_batch_size is not None}
    return TrialState(
        row, found, stats, row.arm_batch_size is not None, row.t_lease_renewed_at, renewed,
        row.t_pruning_round, last, row.min_converged_epochs, fewest,
    )  # fmt: skip


# A predictive job's non-final report keeps the trial's previous report: one
# row by primary key, no job lock (only this trial's own reports read it).
_REMEMBER_REPORT = (
    update(trial)
    .where(_KEY, trial.c.status == TrialStatus.DISPATCHED.value)
    .values(last_epoch=bindparam("last_epoch"), last_cost=bindparam("last_cost"))
)


async def remember_report(conn: AsyncConnection, running: TrialRead, last: LastReport) -> None:
    """Store a running trial's latest report (predictive policy)."""
    await conn.execute(
        _REMEMBER_REPORT,
        {"k_job_id": running.job_id, "k_number": running.trial_number,
         "last_epoch": last.epoch, "last_cost": last.cost},
    )  # fmt: skip


_FINISH_TRIAL = (
    update(trial)
    .where(_KEY)
    .values(
        status=TrialStatus.SUCCEEDED.value,
        end_timestamp=bindparam("end_timestamp"),
        time=bindparam("time"),
        energy=bindparam("energy"),
        cost=bindparam("cost"),
        converged=bindparam("converged"),
    )
)
_FAIL_TRIAL = (
    update(trial)
    .where(_KEY)
    .values(
        status=TrialStatus.FAILED.value,
        end_timestamp=bindparam("end_timestamp"),
        failure_reason=bindparam("failure_reason"),
    )
)


async def fail_trial(
    conn: AsyncConnection, ended: TrialRead, now: datetime, reason: FailureReason
) -> None:
    await conn.execute(
        _FAIL_TRIAL,
        {"k_job_id": ended.job_id, "k_number": ended.trial_number,
         "end_timestamp": max(now, ended.start_timestamp), "failure_reason": reason.value},
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class ExpiredTrial:
    job_id: str
    trial_number: int
    batch_size: int
    type: TrialType


_LAPSED = and_(
    trial.c.status == TrialStatus.DISPATCHED.value,
    trial.c.lease_renewed_at < bindparam("renewed_before", type_=UTCDateTime()),
)
_EXPIRE = (
    update(trial)
    .values(
        status=TrialStatus.FAILED.value,
        # Never before the start (clocks of replicas may disagree).
        end_timestamp=case((trial.c.start_timestamp > _NOW, trial.c.start_timestamp), else_=_NOW),
        failure_reason=FailureReason.LEASE_EXPIRED.value,
    )
    .returning(trial.c.job_id, trial.c.trial_number, trial.c.batch_size, trial.c.type)
)
_EXPIRE_JOB_TRIALS = _EXPIRE.where(trial.c.job_id == bindparam("k_job_id"), _LAPSED)
_EXPIRE_TRIALS_OF_JOBS = _EXPIRE.where(
    trial.c.job_id.in_(bindparam("job_ids", expanding=True)), _LAPSED
)
# Jobs with a lapsed trial, locked; jobs another transaction holds (a request
# on the job, or another replica's sweep) are skipped, not waited for.
_JOBS_WITH_LAPSED_TRIALS = (
    select(job.c.job_id)
    .where(job.c.job_id.in_(select(trial.c.job_id).where(_LAPSED)))
    .order_by(job.c.job_id)
    .limit(bindparam("limit"))
    .with_for_update(of=job, skip_locked=True)
)
_TOUCH_JOBS = (
    update(job)
    .where(job.c.job_id.in_(bindparam("job_ids", expanding=True)))
    .values(updated_at=_NOW)
)


def _expired(rows: Sequence[Row[Any]]) -> list[ExpiredTrial]:
    return [ExpiredTrial(r.job_id, r.trial_number, r.batch_size, TrialType(r.type)) for r in rows]


async def expire_job_trials(
    conn: AsyncConnection, job_id: str, *, renewed_before: datetime, now: datetime
) -> list[ExpiredTrial]:
    """Fail a locked job's Dispatched trials last renewed before a time: their clients are gone.

    Any type: an exploration that never ends blocks its pruning round forever
    (every request gets a Concurrent trial instead), and a bandit trial's
    result would never arrive either.
    """
    values = {"k_job_id": job_id, "renewed_before": renewed_before, "now": now}
    return _expired((await conn.execute(_EXPIRE_JOB_TRIALS, values)).all())


async def expire_lapsed_trials(
    conn: AsyncConnection, *, renewed_before: datetime, now: datetime, max_jobs: int
) -> tuple[int, list[ExpiredTrial]]:
    """Lock up to ``max_jobs`` jobs with lapsed trials and expire those trials.

    Returns how many jobs were locked (fewer than ``max_jobs``: no more to do
    now) and the trials expired. PostgreSQL skips jobs locked elsewhere
    (``FOR UPDATE SKIP LOCKED``), so replicas sweeping at once share the work
    and each trial is expired once; SQLite has one writer at a time.
    """
    locked = await conn.execute(
        _JOBS_WITH_LAPSED_TRIALS, {"renewed_before": renewed_before, "limit": max_jobs}
    )
    job_ids = [r.job_id for r in locked]
    if not job_ids:
        return 0, []
    # A new statement, so it sees every commit made before the locks were taken.
    values = {"job_ids": job_ids, "renewed_before": renewed_before, "now": now}
    expired = _expired((await conn.execute(_EXPIRE_TRIALS_OF_JOBS, values)).all())
    await conn.execute(_TOUCH_JOBS, {"job_ids": job_ids, "now": now})
    return len(job_ids), expired


async def list_trials(
    conn: AsyncConnection,
    job_id: str,
    *,
    status: TrialStatus | None,
    trial_type: TrialType | None,
    after: int | None,
    limit: int,
    lease: Lease | None = None,
) -> list[TrialRead]:
    # A filter on status uses ix_trial_job_id_status, one on type
    # ix_trial_job_id_type_status, none the primary key; all in trial order.
    statement = _page(
        select(trial).where(trial.c.job_id == job_id).order_by(trial.c.trial_number).limit(limit),
        (trial.c.status, operator.eq, status),
        (trial.c.type, operator.eq, trial_type),
        (trial.c.trial_number, operator.gt, after),
    )
    return [_trial_read(r._mapping, lease=lease) for r in await conn.execute(statement)]


_EXPLORATIONS = (
    select(
        trial.c.trial_number, trial.c.batch_size, trial.c.status, trial.c.converged, trial.c.cost
    )
    .where(
        trial.c.job_id == bindparam("job_id"),
        trial.c.type == TrialType.EXPLORATION.value,
        trial.c.status.in_([TrialStatus.DISPATCHED.value, TrialStatus.SUCCEEDED.value]),
    )
    .order_by(trial.c.trial_number)
)


async def explorations(conn: AsyncConnection, job_id: str) -> dict[int, list[Exploration]]:
    """Non-Failed Exploration trials per batch size, in trial order.

    At most num_pruning_rounds per batch size: a (batch size, round) pair
    is dispatched again only after its previous exploration Failed.
    """
    by_batch_size: dict[int, list[Exploration]] = defaultdict(list)
    for r in await conn.execute(_EXPLORATIONS, {"job_id": job_id}):
        by_batch_size[r.batch_size].append(
            Exploration(
                r.trial_number,
                r.batch_size,
                r.status == TrialStatus.DISPATCHED,
                r.converged,
                r.cost,
            )
        )
    return dict(by_batch_size)


_RECENT_COSTS = (
    select(trial.c.cost)
    .where(
        trial.c.job_id == bindparam("job_id"),
        trial.c.batch_size == bindparam("batch_size"),
        trial.c.status == TrialStatus.SUCCEEDED.value,
    )
    .order_by(trial.c.trial_number.desc())
    .limit(bindparam("limit"))
)


async def recent_costs(
    conn: AsyncConnection, job_id: str, batch_size: int, limit: int
) -> list[float]:
    """Costs of the last ``limit`` Succeeded trials of a batch size, oldest first."""
    if limit <= 0:
        return []
    rows = await conn.execute(
        _RECENT_COSTS, {"job_id": job_id, "batch_size": batch_size, "limit": limit}
    )
    return [float(r.cost) for r in reversed(rows.all())]


# ------------------------------------------------ what a final report changes

_SAVE_STATS = (
    update(batch_size)
    .where(
        batch_size.c.job_id == bindparam("k_job_id"),
        batch_size.c.batch_size == bindparam("k_batch_size"),
    )
    .values(
        reward_count=bindparam("reward_count"),
        reward_mean=bindparam("reward_mean"),
        reward_m2=bindparam("reward_m2"),
        min_converged_epochs=bindparam("min_converged_epochs"),
        predicted_cost=func.coalesce(bindparam("predicted_cost"), batch_size.c.predicted_cost),
    )
)
# A group's statistics of a batch size: atomic increments (and a running
# minimum), never values computed from a read, so that final reports of
# different jobs of one group, each under its own job's lock, never lose
# one another's update. PostgreSQL re-evaluates the SET on the newest row
# version when it waited for another writer's commit; SQLite has one writer.
_epochs = bindparam("g_epochs", type_=Integer)
_converged_now = bindparam("g_converged", type_=Integer)
_COUNT_IN_GROUP = (
    update(group_batch_size)
    .where(
        group_batch_size.c.group_name == bindparam("k_group"),
        group_batch_size.c.batch_size == bindparam("k_batch_size"),
    )
    .values(
        runs=group_batch_size.c.runs + 1,
        exhausted=group_batch_size.c.exhausted + bindparam("g_exhausted", type_=Integer),
        converged=group_batch_size.c.converged + _converged_now,
        total_epochs=group_batch_size.c.total_epochs + _converged_now * _epochs,
        min_epochs=case(
            (
                and_(
                    _converged_now == 1,
                    (group_batch_size.c.min_epochs.is_(None))
                    | (group_batch_size.c.min_epochs > _epochs),
                ),
                _epochs,
            ),
            else_=group_batch_size.c.min_epochs,
        ),
    )
)
_SAVE_MIN_COST = (
    update(job)
    .where(job.c.job_id == bindparam("k_job_id"))
    .values(
        min_cost=bindparam("min_cost"),
        min_cost_batch_size=bindparam("min_cost_batch_size"),
        updated_at=_NOW,
    )
)
_TOUCH_JOB = update(job).where(job.c.job_id == bindparam("k_job_id")).values(updated_at=_NOW)
_ARM_KEY = and_(
    arm.c.job_id == bindparam("k_job_id"), arm.c.batch_size == bindparam("k_batch_size")
)
_SAVE_ARM = (
    update(arm)
    .where(_ARM_KEY)
    .values(
        param_mean=bindparam("param_mean"),
        param_precision=bindparam("param_precision"),
        reward_precision=bindparam("reward_precision"),
        num_observations=bindparam("num_observations"),
    )
)


def _arm_values(job_id: str, posterior: ArmPosterior) -> dict[str, Any]:
    return {
        "k_job_id": job_id,
        "k_batch_size": posterior.batch_size,
        "param_mean": posterior.param_mean,
        "param_precision": posterior.param_precision,
        "reward_precision": posterior.reward_precision,
        "num_observations": posterior.num_observations,
    }


# PostgreSQL runs a final report's writes as one statement (data-modifying
# CTEs always run to completion); SQLite runs them one by one.
_FINISHED = _FINISH_TRIAL.returning(trial.c.job_id).cte("finished")
_COUNTED = _SAVE_STATS.returning(batch_size.c.job_id).cte("counted")
_REFITTED = _SAVE_ARM.returning(arm.c.job_id).cte("refitted")
_GROUPED = _COUNT_IN_GROUP.returning(group_batch_size.c.batch_size).cte("grouped")
_RECORD = {
    (refit, grouped): _SAVE_MIN_COST.add_cte(
        _FINISHED,
        _COUNTED,
        *((_REFITTED,) if refit else ()),
        *((_GROUPED,) if grouped else ()),
    )
    for refit in (False, True)
    for grouped in (False, True)
}


@dataclass(frozen=True, slots=True)
class GroupResult:
    """What a final report of a group's job adds to the group's statistics."""

    group: str
    converged: bool
    exhausted: bool
    epochs: int
    predicted_cost: float | None


async def record_result(
    conn: AsyncConnection,
    ended: TrialRead,
    *,
    time: float,
    energy: float,
    cost: float,
    converged: bool,
    stats: RewardStats,
    min_cost: float | None,
    min_cost_batch_size: int,
    arm_: ArmPosterior | None,
    now: datetime,
    min_converged_epochs: int | None = None,
    grouped: GroupResult | None = None,
) -> None:
    """Store a final report in one round trip where the database allows.

    The trial's result, its batch size's running statistics (and fewest
    epochs of a converged trial), the job's min cost, if refitted the arm,
    and for a group's job the group's statistics of the batch size and the
    job's predicted cost of it.
    """
    values = {
        "predicted_cost": None if grouped is None else grouped.predicted_cost,
        "k_job_id": ended.job_id,
        "k_number": ended.trial_number,
        "k_batch_size": ended.batch_size,
        "end_timestamp": max(now, ended.start_timestamp),
        "time": time,
        "energy": energy,
        "cost": cost,
        "converged": converged,
        "reward_count": stats.count,
        "reward_mean": stats.mean,
        "reward_m2": stats.m2,
        "min_converged_epochs": min_converged_epochs,
        "min_cost": min_cost,
        "min_cost_batch_size": min_cost_batch_size,
        "now": now,
    }
    if arm_ is not None:
        values.update(_arm_values(ended.job_id, arm_))
    if grouped is not None:
        values |= {"k_group": grouped.group, "g_exhausted": int(grouped.exhausted),
                   "g_converged": int(grouped.converged), "g_epochs": grouped.epochs}  # fmt: skip
    if conn.dialect.name == "postgresql":
        await conn.execute(_RECORD[arm_ is not None, grouped is not None], values)
        return
    for statement in (_FINISH_TRIAL, _SAVE_STATS, _SAVE_MIN_COST):
        await conn.execute(statement, values)
    if arm_ is not None:
        await conn.execute(_SAVE_ARM, values)
    if grouped is not None:
        await conn.execute(_COUNT_IN_GROUP, values)


async def touch_job(conn: AsyncConnection, job_id: str, now: datetime) -> None:
    await conn.execute(_TOUCH_JOB, {"k_job_id": job_id, "now": now})


_INSERT_ARM = insert(arm).values(
    job_id=bindparam("k_job_id"),
    batch_size=bindparam("k_batch_size"),
    param_mean=bindparam("param_mean"),
    param_precision=bindparam("param_precision"),
    reward_precision=bindparam("reward_precision"),
    num_observations=bindparam("num_observations"),
)


async def insert_arms(conn: AsyncConnection, job_id: str, arms: Sequence[ArmPosterior]) -> None:
    await conn.execute(_INSERT_ARM, [_arm_values(job_id, a) for a in arms])


# ------------------------------------------------------------------ groups

GroupRow = Row[Any]  # a row of the job_group table

_INSERT_GROUP = _insert_if_absent(job_group, job_group.c.name)
_GROUP = select(job_group).where(job_group.c.name == bindparam("name"))
_INSERT_GROUP_BATCH_SIZES = _insert_if_absent(group_batch_size)


async def join_group(
    conn: AsyncConnection,
    name: str,
    *,
    target_metric: float,
    higher_is_better_metric: bool,
    max_epochs: int,
    batch_sizes: Sequence[int],
    now: datetime,
) -> GroupRow:
    """Create the group unless it exists, with a statistics row per batch size; its row.

    The caller compares the row's definition of converged with the job's.
    ON CONFLICT DO NOTHING: of two registrations creating one group at once,
    the second waits for the first to commit, then reads its row.
    """
    values = {"name": name, "target_metric": target_metric, "max_epochs": max_epochs,
              "higher_is_better_metric": higher_is_better_metric, "created_at": now}  # fmt: skip
    await conn.execute(_INSERT_GROUP[conn.dialect.name], values)
    row = (await conn.execute(_GROUP, {"name": name})).one()
    await conn.execute(
        _INSERT_GROUP_BATCH_SIZES[conn.dialect.name],
        [
            {"group_name": name, "batch_size": bs, "runs": 0, "exhausted": 0, "converged": 0,
             "min_epochs": None, "total_epochs": 0}
            for bs in batch_sizes
        ],
    )  # fmt: skip
    return row


async def group_row(conn: AsyncConnection, name: str) -> GroupRow | None:
    return (await conn.execute(_GROUP, {"name": name})).first()


_GROUP_STATS = (
    select(group_batch_size)
    .where(group_batch_size.c.group_name == bindparam("name"))
    .order_by(group_batch_size.c.batch_size)
)


def _group_batch_size(r: Row[Any]) -> GroupBatchSize:
    return GroupBatchSize(r.runs, r.exhausted, r.converged, r.min_epochs, r.total_epochs)


async def group_stats(conn: AsyncConnection, name: str) -> dict[int, GroupBatchSize]:
    """A group's statistics per batch size, ascending."""
    rows = await conn.execute(_GROUP_STATS, {"name": name})
    return {r.batch_size: _group_batch_size(r) for r in rows}


# What a group's job reads to decide: the group's statistics of the batch
# sizes at least ``from`` (0 at dispatch: all; a report's: its batch size's
# bound) and the job's recorded predicted costs, in one statement.
_KNOWLEDGE = union_all(
    select(
        literal("g").label("kind"),
        group_batch_size.c.batch_size,
        group_batch_size.c.runs,
        group_batch_size.c.exhausted,
        group_batch_size.c.converged,
        group_batch_size.c.min_epochs,
        group_batch_size.c.total_epochs,
        literal(None, Float).label("predicted_cost"),
    ).where(
        group_batch_size.c.group_name == bindparam("name"),
        group_batch_size.c.batch_size >= bindparam("from"),
    ),
    select(
        literal("p").label("kind"),
        batch_size.c.batch_size,
        literal(0),
        literal(0),
        literal(0),
        literal(None, Integer),
        literal(0),
        batch_size.c.predicted_cost,
    ).where(batch_size.c.job_id == bindparam("job_id"), batch_size.c.predicted_cost.is_not(None)),
)


async def group_knowledge(
    conn: AsyncConnection, name: str, job_id: str, *, from_batch_size: int = 0
) -> GroupKnowledge:
    """What a group's job knows from its group (the batch sizes >= ``from_batch_size``)."""
    rows = await conn.execute(_KNOWLEDGE, {"name": name, "job_id": job_id, "from": from_batch_size})
    stats, predicted = {}, {}
    for r in rows:
        if r.kind == "g":
            stats[r.batch_size] = _group_batch_size(r)
        else:
            predicted[r.batch_size] = float(r.predicted_cost)
    return GroupKnowledge(stats, predicted)


# The other jobs of a group with a best batch size, the one with the most
# trials first (rule 3): read once per job, at its first dispatch.
_SIBLING = (
    select(job.c.next_trial_number, job.c.min_cost_batch_size)
    .where(
        job.c.group == bindparam("name"),
        job.c.job_id != bindparam("job_id"),
        job.c.min_cost.is_not(None),
    )
    .order_by(job.c.next_trial_number.desc(), job.c.job_id)
    .limit(1)
)


async def sibling_best(conn: AsyncConnection, name: str, job_id: str) -> int | None:
    """The best batch size of the group's other job with the most trials (None: none)."""
    row = (await conn.execute(_SIBLING, {"name": name, "job_id": job_id})).first()
    return None if row is None else int(row.min_cost_batch_size)


async def group_members(
    conn: AsyncConnection, name: str, *, after: str | None, limit: int
) -> list[JobRow]:
    """A page of a group's jobs, by job_id (ix_job_group)."""
    statement = _page(
        select(job).where(job.c.group == name).order_by(job.c.job_id).limit(limit),
        (job.c.job_id, operator.gt, after),
    )
    return list((await conn.execute(statement)).all())
