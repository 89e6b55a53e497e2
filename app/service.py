"""Write use cases: one function per request, one transaction each.

Every use case that changes a job first takes that job's row lock, always in
the same order (job row, then its trials, batch sizes and arms), so requests
on one job run one at a time across processes and replicas, and never
deadlock. The transaction commits when the use case returns.

Each use case's statements run as one synchronous function on one pooled
connection (store.engine's ``in_transaction`` and ``lock_free``: one greenlet
switch and one checkout per request); what it logs and counts happens after
the commit, here.
"""

from __future__ import annotations

import functools
import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from app import bandit, judging
from app.bandit import (
    FailureReason,
    GroupKnowledge,
    Lease,
    Policy,
    Stage,
    TrialStatus,
    TrialType,
)
from app.errors import (
    BatchSizeMismatchError,
    ForbiddenError,
    GroupMismatchError,
    JobNotFoundError,
    JobSpecMismatchError,
    TrialNotFoundError,
)
from app.roles import ANYONE, Principal
from app.schemas import (
    JOB_SPEC_FIELDS,
    CreatedJob,
    JobSpec,
    ReportResponse,
    TrainingResult,
    TrialId,
    TrialRead,
)
from app.store import arms, groups, jobs, trials
from app.store.engine import begin_writing, in_transaction, lock_free
from app.store.rows import JobRow
from app.store.trials import ExpiredTrial, Renewal, TrialState
from app.telemetry import metrics

logger = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


def created_job(job: JobRow, batch_sizes: tuple[int, ...]) -> CreatedJob:
    values = {name: getattr(job, name) for name in JOB_SPEC_FIELDS}
    return CreatedJob.model_construct(job_id=job.job_id, batch_sizes=list(batch_sizes), **values)


def _authorize(caller: Principal, job_id_prefix: str, job_id: str | None) -> None:
    """403 unless the caller may train jobs of this prefix.

    Called on the job row each use case reads anyway (the body's prefix for a
    registration), so checking a trainer's prefixes costs no query, and
    before the use case writes anything.
    """
    if (refusal := caller.prefix_refusal(job_id_prefix, job_id)) is not None:
        raise ForbiddenError(refusal)


# ------------------------------------------------------------ registration


@dataclass(frozen=True)
class Registration:
    job: CreatedJob
    created: bool


def new_job_row(spec: JobSpec, job_id: str, now: datetime) -> dict[str, Any]:
    """The jobs row of a just-registered job (also the base of an imported Zeus job)."""
    return {
        **{name: getattr(spec, name) for name in JOB_SPEC_FIELDS},
        "job_id": job_id,
        "stage": Stage.PRUNING.value,
        "min_cost": None,
        "min_cost_batch_size": spec.default_batch_size,
        "next_trial_number": 1,
        "rng_state": None,
        "created_at": now,
        "updated_at": now,
    }


async def register_job(
    engine: AsyncEngine,
    spec: JobSpec,
    *,
    now: datetime,
    default_policy: Policy = Policy.ZEUS,
    group_by_prefix: bool = False,
    caller: Principal = ANYONE,
) -> Registration:
    """Create a job, or confirm that an identical one exists (idempotent).

    Zeus's client registers at the start of every recurrence, so the common
    case is a job that exists: answered from one lock-free read. Registered
    specs never change, so that read cannot be stale in a way that matters.

    A registration without ``policy`` creates a job with ``default_policy``
    and matches an existing job whatever its policy: changing
    BSO_DEFAULT_POLICY affects new jobs only, and a Zeus client (which never
    sends one) keeps re-registering its job as before. ``group`` likewise:
    none given creates a job in no group, or with ``group_by_prefix`` in the
    group named by its prefix, and matches an existing job whatever its group.
    A job that joins a group whose definition of converged (target metric,
    direction, max epochs) differs from its own is refused (409), and not
    created.
    """
    _authorize(caller, spec.job_id_prefix, spec.job_id)
    group = spec.group or (spec.job_id_prefix if group_by_prefix else None)
    full = spec.model_copy(update={"policy": spec.policy or default_policy, "group": group})
    registration = await lock_free(engine, _register, spec, full, now)
    if registration.created:
        logger.info("registered job %s", registration.job.job_id)
    return registration


def _register(conn: Connection, requested: JobSpec, spec: JobSpec, now: datetime) -> Registration:
    """``spec``: the ``requested`` one with its policy and group decided."""
    if spec.job_id is not None and (existing := jobs.load_job(conn, spec.job_id)) is not None:
        return confirm_registered(requested, existing)
    begin_writing(conn)
    with conn.begin():
        if spec.group is not None:
            _join_group(conn, spec.group, spec, now)
        if spec.job_id is None:
            # 32 random bits; on the rare collision, draw again.
            while True:
                job_id = f"{spec.job_id_prefix}-{secrets.token_hex(4)}"
                if jobs.insert_job_if_absent(
                    conn, new_job_row(spec, job_id, now), spec.batch_sizes
                ):
                    break
        else:
            job_id = spec.job_id
            if not jobs.insert_job_if_absent(
                conn, new_job_row(spec, job_id, now), spec.batch_sizes
            ):
                existing = jobs.load_job(conn, job_id)
                if existing is None:  # deleted between our insert and this read: rare
                    raise JobSpecMismatchError(f"Job {job_id!r} changed concurrently; retry.")
                return confirm_registered(requested, existing)
    job = CreatedJob.model_construct(**{**spec.model_dump(), "job_id": job_id})
    return Registration(job, created=True)


def _join_group(conn: Connection, name: str, spec: JobSpec, now: datetime) -> None:
    """Create the group or check that the job agrees with it on what converged means."""
    row = groups.join_group(
        conn, name, target_metric=spec.target_metric,
        higher_is_better_metric=spec.higher_is_better_metric, max_epochs=spec.max_epochs,
        batch_sizes=spec.batch_sizes, now=now,
    )  # fmt: skip
    differing = [
        field
        for field in ("target_metric", "higher_is_better_metric", "max_epochs")
        if getattr(row, field) != getattr(spec, field)
    ]
    if differing:
        raise GroupMismatchError(
            f"Job group {name!r} has a different {', '.join(differing)}: its jobs must agree "
            "on what converged means (target_metric, higher_is_better_metric, max_epochs). "
            "Use another group, or none."
        )


def confirm_registered(spec: JobSpec, existing: jobs.JobState) -> Registration:
    """Compare a registration with the job registered under its id: 200 or 409."""
    registered = created_job(existing.job, existing.batch_sizes)
    differing = [
        name
        for name in (*JOB_SPEC_FIELDS, "batch_sizes")
        if getattr(registered, name) != getattr(spec, name)
        # none given: the stored one
        and not (name in ("policy", "group") and getattr(spec, name) is None)
    ]
    if differing:
        raise JobSpecMismatchError(
            f"Job {existing.job.job_id!r} is already registered with a different "
            f"{', '.join(differing)}. Use a new job_id for a different configuration."
        )
    return Registration(registered, created=False)


async def delete_job(engine: AsyncEngine, job_id: str) -> None:
    """Delete a job with its batch sizes, trials and arms."""
    if not await in_transaction(engine, jobs.delete_job, job_id):
        raise JobNotFoundError(job_id)
    logger.info("deleted job %s", job_id)


# ---------------------------------------------------------------- dispatch


def _generator(job: JobRow) -> np.random.Generator:
    """The job's generator: persisted for seeded jobs, fresh OS entropy otherwise."""
    if job.mab_seed is None:
        return np.random.default_rng()
    rng = np.random.default_rng(job.mab_seed)
    if job.rng_state is not None:
        rng.bit_generator.state = job.rng_state
    return rng


def log_expired(expired: list[ExpiredTrial], lease: Lease) -> None:
    """Log and count trials whose lease expired (once their transaction committed)."""
    metrics.leases_expired(len(expired))
    for t in expired:
        logger.warning("job %s trial %d (%s, batch size %d): lease of %d s expired, marked "
                       "Failed", t.job_id, t.trial_number, t.type, t.batch_size,
                       lease.seconds)  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Dispatch:
    """What a dispatch's transaction did: its trial, and what is logged once it committed."""

    trial: TrialId
    trial_type: TrialType | None = None  # None: a repeated dispatch, nothing written
    expired: tuple[ExpiredTrial, ...] = ()


async def dispatch_trial(
    engine: AsyncEngine,
    job_id: str,
    *,
    now: datetime,
    lease: Lease = Lease(0),
    caller: Principal = ANYONE,
    idempotency_key: str | None = None,
) -> TrialId:
    """Choose the next batch size and record it as a new trial.

    With a lease, the job's trials whose lease ran out are marked Failed
    first (under the job's lock), so that lost explorations are explored again.
    A repeat of a dispatch (the same ``idempotency_key``) whose trial runs within
    its lease answers that trial and writes nothing (SPEC 3, idempotency keys).
    """
    done = await in_transaction(engine, _dispatch, job_id, now, lease, caller, idempotency_key)
    trial = done.trial
    if done.trial_type is None:
        logger.info("job %s trial %d: dispatch repeated", job_id, trial.trial_number)
        return trial
    log_expired(list(done.expired), lease)
    logger.info("job %s trial %d: %s batch size %d", job_id, trial.trial_number,
                done.trial_type, trial.batch_size)  # fmt: skip
    metrics.trial_dispatched(done.trial_type)
    return trial


def _dispatch(
    conn: Connection,
    job_id: str,
    now: datetime,
    lease: Lease,
    caller: Principal,
    idempotency_key: str | None,
) -> _Dispatch:
    state = jobs.lock_job(conn, job_id)
    if state is None:
        raise JobNotFoundError(job_id)
    job = state.job
    _authorize(caller, job.job_id_prefix, job_id)  # before anything is written
    if idempotency_key is not None and (
        repeated := trials.keyed_trial(conn, job_id, idempotency_key, lease, now)
    ):
        return _Dispatch(repeated)
    expired: list[ExpiredTrial] = []
    renewed_before = lease.expired_before(now)
    if renewed_before is not None and state.may_have_lapsed(renewed_before):
        expired = trials.expire_job_trials(conn, job_id, renewed_before=renewed_before, now=now)
    in_bandit = job.stage == Stage.MAB
    explorations = {}
    posteriors: tuple[bandit.ArmPosterior, ...] = ()
    if in_bandit:
        posteriors = arms.job_arms(conn, job_id)
    else:
        explorations = trials.explorations(conn, job_id)
    group: GroupKnowledge | None = None
    start = job.start_batch_size
    if job.group is not None and not in_bandit:
        group = groups.group_knowledge(conn, job.group, job_id)
        if start is None and job.next_trial_number == 1:  # rule 3, once per job
            start = bandit.walk_start(state.params, groups.sibling_best(conn, job.group, job_id))
    rng = functools.cache(lambda: _generator(job))  # made only when a draw is due
    decision = bandit.decide(
        state.params,
        in_bandit_stage=in_bandit,
        min_cost_batch_size=job.min_cost_batch_size,
        explorations=explorations,
        arms=posteriors,
        rng=rng,
        group=group,
        start_batch_size=start,
    )
    stage = Stage(job.stage)
    if decision.new_arms is not None:
        arms.insert_arms(conn, job_id, decision.new_arms)
        stage = Stage.MAB
        logger.info("job %s enters the bandit stage with arms %s", job_id,
                    [a.batch_size for a in decision.new_arms])  # fmt: skip
        if decision.dead_end is not None:  # SPEC 5, rule 4: the job goes on regardless
            logger.warning("job %s: %s", job_id, decision.dead_end.message)
    rng_state = job.rng_state
    if job.mab_seed is not None and decision.trial_type == TrialType.MAB:
        rng_state = dict(rng().bit_generator.state)
    # The trial number comes from the job's counter, under its row lock.
    number = job.next_trial_number
    trials.add_trial(
        conn, job, number=number, batch_size=decision.batch_size,
        trial_type=decision.trial_type, stage=stage, rng_state=rng_state, now=now,
        pruning_round=decision.pruning_round, start_batch_size=start,
        idempotency_key=idempotency_key,
    )  # fmt: skip
    trial = TrialId.model_construct(
        job_id=job_id, batch_size=decision.batch_size, trial_number=number
    )
    return _Dispatch(trial, decision.trial_type, tuple(expired))


# ------------------------------------------------------------------ report


def _load_trial(
    conn: Connection,
    key: TrialId,
    caller: Principal,
    *,
    lock: bool = False,
    renew: Renewal | None = None,
) -> tuple[TrialState, TrialRead]:
    """The job and trial a request names, checked against caller and batch size.

    The caller's job prefixes are checked on the job row read here anyway.

    ``lock``: take the job's row lock first, and read what it guards after.
    ``renew``: renew the trial's lease if it is due (see trials.load_trial).
    """
    if lock and not jobs.lock_job_row(conn, key.job_id):
        raise JobNotFoundError(key.job_id)
    state = trials.load_trial(conn, key.job_id, key.trial_number, renew=renew)
    if state is None:
        raise JobNotFoundError(key.job_id)
    _authorize(caller, state.job.job_id_prefix, key.job_id)
    if state.trial is None:
        raise TrialNotFoundError(key.job_id, key.trial_number)
    if state.trial.batch_size != key.batch_size:
        raise BatchSizeMismatchError(
            f"Trial {key.trial_number} of job {key.job_id!r} was dispatched with batch size "
            f"{state.trial.batch_size}, not {key.batch_size}."
        )
    return state, state.trial


@dataclass(frozen=True, slots=True)
class _Answer:
    """A report's answer, why (the metric's label), and the trial if the report ended it."""

    response: ReportResponse
    reason: str
    ended: TrialRead | None = None
    cost: float = 0.0


async def report_result(
    engine: AsyncEngine,
    result: TrainingResult,
    *,
    now: datetime,
    lease: Lease = Lease(0),
    caller: Principal = ANYONE,
) -> ReportResponse:
    """Judge one epoch report; a final one records the result and teaches the bandit.

    Most reports only say "keep training", so they are judged on one
    lock-free read. That read also renews the trial's lease when the stored
    renewal is at least ``lease.renew_every`` old (one row, no job lock; on
    PostgreSQL in the same statement). A zeus job's "keep training" changes
    nothing else; a predictive job's stores the report for the next one (one
    UPDATE of the trial's row by primary key, no job lock). Only a report
    that ends the trial takes the job's lock, on the same connection, and is
    judged again on what it finds under the lock.
    """
    renew = None
    if (before := lease.renewal_due_before(now)) is not None:
        renew = Renewal(result.batch_size, before, now)
    answer = await lock_free(engine, _report, result, now, lease, caller, renew)
    if (trial := answer.ended) is not None:
        logger.info("job %s trial %d ended: converged=%s cost=%.6g", trial.job_id,
                    trial.trial_number, answer.response.converged, answer.cost)  # fmt: skip
    metrics.report_answered(answer.reason)
    return answer.response


def _report(
    conn: Connection,
    result: TrainingResult,
    now: datetime,
    lease: Lease,
    caller: Principal,
    renew: Renewal | None,
) -> _Answer:
    # A trainer held to some prefixes must not renew another team's trial:
    # its first read writes nothing, and renews (one more round trip) only
    # once its prefix passed and a renewal is due.
    deferred = renew is not None and caller.limited_to_prefixes
    state, trial = _load_trial(conn, result, caller, renew=None if deferred else renew)
    if deferred and judging.was_due(state, lease, now):
        state, trial = _load_trial(conn, result, caller, renew=renew)
    if renew is not None and not state.renewed and judging.was_due(state, lease, now):
        # Due but not renewed: another request ended it meanwhile. Read what it left.
        state, trial = _load_trial(conn, result, caller)
    if trial.status != TrialStatus.DISPATCHED:
        return _Answer(judging.answer_for_ended(trial), metrics.ALREADY_ENDED)  # they never change
    judged = judging.judge(state, trial, result, judging.group_knowledge(conn, state, trial))
    verdict = judged.verdict
    if not verdict.stop_train:
        if judged.last_report is not None:
            trials.remember_report(conn, trial, judged.last_report)
        return _Answer(judging.keep_training(verdict), verdict.reason)

    begin_writing(conn)
    with conn.begin():
        state, trial = _load_trial(conn, result, caller, lock=True)
        if trial.status != TrialStatus.DISPATCHED:  # another request ended it meanwhile
            return _Answer(judging.answer_for_ended(trial), metrics.ALREADY_ENDED)
        judged = judging.judge(state, trial, result, judging.group_knowledge(conn, state, trial))
        verdict = judged.verdict
        if not verdict.stop_train:  # min_cost moved meanwhile: a rare race
            if judged.last_report is not None:
                trials.remember_report(conn, trial, judged.last_report)
            return _Answer(judging.keep_training(verdict), verdict.reason)
        _record_result(conn, state, trial, result, judged, now)
    response = ReportResponse(stop_train=True, converged=verdict.converged, message=verdict.message)
    return _Answer(response, verdict.reason, trial, verdict.cost)


def _record_result(
    conn: Connection,
    state: TrialState,
    trial: TrialRead,
    result: TrainingResult,
    judged: judging.Judgement,
    now: datetime,
) -> None:
    job, params, verdict = state.job, judged.params, judged.verdict
    # In the bandit stage every result of an arm refits it, whatever the
    # trial's type (a late pruning-stage Concurrent trial included).
    refit = job.stage == Stage.MAB and state.is_arm
    earlier: list[float] = []
    if refit and params.window_size > 1:
        costs = trials.recent_costs(conn, job.job_id, trial.batch_size, params.window_size - 1)
        earlier = [bandit.reward(c) for c in costs]
    lesson = bandit.learn(
        params, verdict, batch_size=trial.batch_size, min_cost=job.min_cost,
        min_cost_batch_size=job.min_cost_batch_size, stats=state.stats, refit=refit,
        earlier_rewards=earlier, recorded_cost=judged.recorded_cost,
    )  # fmt: skip
    # The trial's cost is what it counts as (a predictive stop: the predicted
    # cost, as the pruning walk and window refits read it back); time and
    # energy are as reported.
    arms.record_result(
        conn, trial, time=result.time, energy=result.energy, cost=judged.recorded_cost,
        converged=verdict.converged, stats=lesson.stats, min_cost=lesson.min_cost,
        min_cost_batch_size=lesson.min_cost_batch_size, arm_=lesson.arm, now=now,
        min_converged_epochs=judged.min_converged_epochs,
        grouped=judging.group_result(state, judged, result),
    )  # fmt: skip


# --------------------------------------------------------------------- end


async def end_trial(
    engine: AsyncEngine, trial_id: TrialId, *, now: datetime, caller: Principal = ANYONE
) -> TrialRead:
    """Mark a trial Failed unless a final report already ended it (idempotent).

    Zeus's client sends this at exit, usually after the final report ended
    the trial: that case is answered from one lock-free read.
    """
    trial, ended = await lock_free(engine, _end_trial, trial_id, now, caller)
    if not ended:
        return trial  # ended trials never change again
    logger.info("job %s trial %d ended without a result", trial.job_id, trial.trial_number)
    metrics.trial_ended(TrialStatus.FAILED)
    return trial.model_copy(
        update={
            "status": TrialStatus.FAILED,
            "end_timestamp": max(now, trial.start_timestamp),
            "failure_reason": FailureReason.ENDED,
        }
    )


def _end_trial(
    conn: Connection, trial_id: TrialId, now: datetime, caller: Principal
) -> tuple[TrialRead, bool]:
    """The trial as read, and whether this request ended it."""
    _, trial = _load_trial(conn, trial_id, caller)
    if trial.status != TrialStatus.DISPATCHED:
        return trial, False
    begin_writing(conn)
    with conn.begin():
        _, trial = _load_trial(conn, trial_id, caller, lock=True)
        if trial.status != TrialStatus.DISPATCHED:
            return trial, False
        trials.fail_trial(conn, trial, now, FailureReason.ENDED)
        jobs.touch_job(conn, trial.job_id, now)
    return trial, True
