"""Trials: dispatch, the report's read (with its lease renewal), ends, expiry, listing.

Key parameters are named k_*: a column's own name is reserved in UPDATE ... SET.
"""

from __future__ import annotations

import operator
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Integer,
    Row,
    String,
    and_,
    bindparam,
    case,
    func,
    insert,
    literal,
    select,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection

from app.bandit import (
    Exploration,
    FailureReason,
    LastReport,
    Lease,
    Policy,
    RewardStats,
    Stage,
    TrialStatus,
    TrialType,
)
from app.schemas import TrialId, TrialRead
from app.store.rows import NOW, PARAM_FIELDS, TRIAL_KEY, JobRow, page, trial_read
from app.store.tables import UTCDateTime, arm, batch_size, job, trial

# Dispatch: the job's counter and stage move, and the trial is inserted.
_BUMP_JOB = (
    update(job)
    .where(job.c.job_id == bindparam("k_job_id"))
    .values(
        next_trial_number=bindparam("next_trial_number"),
        stage=bindparam("stage"),
        rng_state=bindparam("rng_state"),
        start_batch_size=bindparam("start_batch_size"),
        updated_at=NOW,
    )
)
_NEW_TRIAL: dict[str, Any] = {
    "job_id": bindparam("k_job_id", type_=String),
    "trial_number": bindparam("k_number", type_=Integer),
    "batch_size": bindparam("batch_size", type_=Integer),
    "type": bindparam("type", type_=String),
    "status": literal(TrialStatus.DISPATCHED.value),
    "start_timestamp": NOW,
    "lease_renewed_at": NOW,
    "pruning_round": bindparam("pruning_round", type_=Integer),
    "idempotency_key": bindparam("idempotency_key", type_=String),
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


# A repeated dispatch (SPEC 3, idempotency keys): the trial its key made, by
# ix_trial_job_id_idempotency_key. Under the job's lock, so one trial per key.
_KEYED = (trial.c.job_id == bindparam("k_job_id"), trial.c.idempotency_key == bindparam("k_key"))
_KEYED_TRIAL = select(
    trial.c.job_id, trial.c.batch_size, trial.c.trial_number, trial.c.status,
    trial.c.lease_renewed_at,
).where(*_KEYED)  # fmt: skip
_FREE_KEY = update(trial).where(*_KEYED).values(idempotency_key=None)


def keyed_trial(
    conn: Connection, job_id: str, key: str, lease: Lease, now: datetime
) -> TrialId | None:
    """The trial of ``job_id`` dispatched with ``key``, if it runs within its lease at ``now``.

    Otherwise the key is free: an ended trial, or one whose lease ran out (the
    dispatch goes on to expire it), gives it up here for the next trial.
    """
    values = {"k_job_id": job_id, "k_key": key}
    row = (conn.execute(_KEYED_TRIAL, values)).first()
    if row is None:
        return None
    if row.status == TrialStatus.DISPATCHED and not lease.is_expired(row.lease_renewed_at, now):
        return TrialId.model_construct(
            job_id=row.job_id, batch_size=row.batch_size, trial_number=row.trial_number
        )
    conn.execute(_FREE_KEY, values)
    return None


def add_trial(
    conn: Connection,
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
    idempotency_key: str | None = None,
) -> None:
    """Record a dispatched trial and advance the job's counter past it."""
    values = {
        "idempotency_key": idempotency_key,
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
        conn.execute(_BUMP_AND_INSERT, values)
    else:
        conn.execute(_BUMP_JOB, values)
        conn.execute(_INSERT_TRIAL, values)


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
    typical_cost: float | None = None  # predictive: mean cost of min_cost_batch_size's trials


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
        *PARAM_FIELDS,
    )
]
# A predictive job's report also needs the fewest epochs of converged trials
# of the batch sizes at least the trial's (app.bandit.epochs_needed): one row
# each, joined only for such a job, so a zeus job's read is one row as before.
_converged = batch_size.alias("converged")
# ... and the running statistics of its min_cost_batch_size, for the reference
# cost of the beta bounds (app.bandit.bound_reference): at most one more row.
_best = batch_size.alias("best")
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
        _best.c.reward_count.label("b_count"),
        _best.c.reward_mean.label("b_mean"),
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
        .outerjoin(
            _best,
            and_(
                job.c.policy == Policy.PREDICTIVE.value,
                _best.c.job_id == job.c.job_id,
                _best.c.batch_size == job.c.min_cost_batch_size,
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
        TRIAL_KEY,
        trial.c.batch_size == bindparam("k_batch_size"),
        trial.c.status == TrialStatus.DISPATCHED.value,
        trial.c.lease_renewed_at <= bindparam("renew_before", type_=UTCDateTime()),
    )
    .values(lease_renewed_at=NOW)
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


def load_trial(
    conn: Connection, job_id: str, trial_number: int, *, renew: Renewal | None = None
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
    rows = (conn.execute(statement, values)).all()
    if not rows:
        return None
    row = rows[0]
    found = None if row.t_trial_number is None else trial_read(row._mapping, "t_")
    renewed = bool(row.renewed) if folded else False
    if renew is not None and not folded and found is not None:
        due = (
            found.status == TrialStatus.DISPATCHED
            and found.batch_size == renew.batch_size
            and row.t_lease_renewed_at <= renew.before
        )
        renewed = due and (conn.execute(_RENEW_LEASE, values)).rowcount > 0
    stats = RewardStats(row.reward_count or 0, row.reward_mean or 0.0, row.reward_m2 or 0.0)
    last = None if row.t_last_epoch is None else LastReport(row.t_last_epoch, row.t_last_cost)
    fewest = {r.c_batch_size: r.c_epochs for r in rows if r.c_batch_size is not None}
    typical = -row.b_mean if row.b_count else None  # rewards are negated costs
    return TrialState(
        row, found, stats, row.arm_batch_size is not None, row.t_lease_renewed_at, renewed,
        row.t_pruning_round, last, row.min_converged_epochs, fewest, typical,
    )  # fmt: skip


# A predictive job's non-final report keeps the trial's previous report: one
# row by primary key, no job lock (only this trial's own reports read it).
_REMEMBER_REPORT = (
    update(trial)
    .where(TRIAL_KEY, trial.c.status == TrialStatus.DISPATCHED.value)
    .values(last_epoch=bindparam("last_epoch"), last_cost=bindparam("last_cost"))
)


def remember_report(conn: Connection, running: TrialRead, last: LastReport) -> None:
    """Store a running trial's latest report (predictive policy)."""
    conn.execute(
        _REMEMBER_REPORT,
        {"k_job_id": running.job_id, "k_number": running.trial_number,
         "last_epoch": last.epoch, "last_cost": last.cost},
    )  # fmt: skip


FINISH_TRIAL = (
    update(trial)
    .where(TRIAL_KEY)
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
    .where(TRIAL_KEY)
    .values(
        status=TrialStatus.FAILED.value,
        end_timestamp=bindparam("end_timestamp"),
        failure_reason=bindparam("failure_reason"),
    )
)


def fail_trial(conn: Connection, ended: TrialRead, now: datetime, reason: FailureReason) -> None:
    conn.execute(
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
        end_timestamp=case((trial.c.start_timestamp > NOW, trial.c.start_timestamp), else_=NOW),
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
    update(job).where(job.c.job_id.in_(bindparam("job_ids", expanding=True))).values(updated_at=NOW)
)


def _expired(rows: Sequence[Row[Any]]) -> list[ExpiredTrial]:
    return [ExpiredTrial(r.job_id, r.trial_number, r.batch_size, TrialType(r.type)) for r in rows]


def expire_job_trials(
    conn: Connection, job_id: str, *, renewed_before: datetime, now: datetime
) -> list[ExpiredTrial]:
    """Fail a locked job's Dispatched trials last renewed before a time: their clients are gone.

    Any type: an exploration that never ends blocks its pruning round forever
    (every request gets a Concurrent trial instead), and a bandit trial's
    result would never arrive either.
    """
    values = {"k_job_id": job_id, "renewed_before": renewed_before, "now": now}
    return _expired((conn.execute(_EXPIRE_JOB_TRIALS, values)).all())


async def expire_lapsed_trials(
    conn: AsyncConnection, *, renewed_before: datetime, now: datetime, max_jobs: int
) -> tuple[int, list[ExpiredTrial]]:
    """Lock up to ``max_jobs`` jobs with lapsed trials and expire those trials.

    The lease sweep's, in its transaction: its statements run as one
    synchronous function (:func:`_expire_lapsed`), in one greenlet.

    Returns how many jobs were locked (fewer than ``max_jobs``: no more to do
    now) and the trials expired. PostgreSQL skips jobs locked elsewhere
    (``FOR UPDATE SKIP LOCKED``), so replicas sweeping at once share the work
    and each trial is expired once; SQLite has one writer at a time.
    """
    return await conn.run_sync(_expire_lapsed, renewed_before, now, max_jobs)


def _expire_lapsed(
    conn: Connection, renewed_before: datetime, now: datetime, max_jobs: int
) -> tuple[int, list[ExpiredTrial]]:
    locked = conn.execute(
        _JOBS_WITH_LAPSED_TRIALS, {"renewed_before": renewed_before, "limit": max_jobs}
    )
    job_ids = [r.job_id for r in locked]
    if not job_ids:
        return 0, []
    # A new statement, so it sees every commit made before the locks were taken.
    values = {"job_ids": job_ids, "renewed_before": renewed_before, "now": now}
    expired = _expired((conn.execute(_EXPIRE_TRIALS_OF_JOBS, values)).all())
    conn.execute(_TOUCH_JOBS, {"job_ids": job_ids, "now": now})
    return len(job_ids), expired


def list_trials(
    conn: Connection,
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
    statement = page(
        select(trial).where(trial.c.job_id == job_id).order_by(trial.c.trial_number).limit(limit),
        (trial.c.status, operator.eq, status),
        (trial.c.type, operator.eq, trial_type),
        (trial.c.trial_number, operator.gt, after),
    )
    return [trial_read(r._mapping, lease=lease) for r in conn.execute(statement)]


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


def explorations(conn: Connection, job_id: str) -> dict[int, list[Exploration]]:
    """Non-Failed Exploration trials per batch size, in trial order.

    At most num_pruning_rounds walks per batch size, two for a round that
    converged nowhere (SPEC section 5, rule 4): a walk's exploration of a batch
    size is dispatched again only after its previous one Failed.
    """
    by_batch_size: dict[int, list[Exploration]] = defaultdict(list)
    for r in conn.execute(_EXPLORATIONS, {"job_id": job_id}):
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


def recent_costs(conn: Connection, job_id: str, batch_size: int, limit: int) -> list[float]:
    """Costs of the last ``limit`` Succeeded trials of a batch size, oldest first."""
    if limit <= 0:
        return []
    rows = conn.execute(_RECENT_COSTS, {"job_id": job_id, "batch_size": batch_size, "limit": limit})
    return [float(r.cost) for r in reversed(rows.all())]
