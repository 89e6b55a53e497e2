"""Write use cases: one function per request, one transaction each.

Every use case that changes a job first takes that job's row lock, always in
the same order (job row, then its trials, batch sizes and arms), so requests
on one job run one at a time across processes and replicas, and never
deadlock. The transaction commits when the use case returns.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from app import bandit, metrics
from app import repository as repo
from app.bandit import ArmPosterior, JobParams, Verdict
from app.database import Connection, Database
from app.errors import (
    BatchSizeMismatchError,
    JobNotFoundError,
    JobSpecMismatchError,
    NoConvergedBatchSizeError,
    TrialNotFoundError,
)
from app.repository import JobRow, TrialRow
from app.schemas import CreatedJob, JobSpec, ReportResponse, TrainingResult, TrialId, TrialRead

logger = logging.getLogger(__name__)

# Fields of a registration that must match for a re-registration to be "the same job".
SPEC_FIELDS = tuple(name for name in JobSpec.model_fields if name not in {"job_id", "batch_sizes"})


def utcnow() -> datetime:
    return datetime.now(UTC)


def job_params(job: JobRow, batch_sizes: tuple[int, ...] = ()) -> JobParams:
    """The algorithm's view of a job."""
    return JobParams(
        batch_sizes=batch_sizes,
        default_batch_size=job.default_batch_size,
        eta_knob=job.eta_knob,
        beta_knob=job.beta_knob,
        target_metric=job.target_metric,
        higher_is_better_metric=job.higher_is_better_metric,
        max_epochs=job.max_epochs,
        num_pruning_rounds=job.num_pruning_rounds,
        window_size=job.window_size,
        mab_prior_mean=job.mab_prior_mean,
        mab_prior_precision=job.mab_prior_precision,
        mab_num_explorations=job.mab_num_explorations,
        max_power=job.max_power,
    )


def created_job(job: JobRow, batch_sizes: list[int]) -> CreatedJob:
    values = {name: getattr(job, name) for name in SPEC_FIELDS}
    return CreatedJob.model_construct(job_id=job.job_id, batch_sizes=batch_sizes, **values)


def trial_read(trial: TrialRow) -> TrialRead:
    return TrialRead.model_construct(
        **{name: getattr(trial, name) for name in TrialRead.model_fields}
    )


# ------------------------------------------------------------ registration


@dataclass(frozen=True)
class Registration:
    job: CreatedJob
    created: bool


def _new_job(spec: JobSpec, job_id: str, now: datetime) -> JobRow:
    values: dict[str, Any] = {name: getattr(spec, name) for name in SPEC_FIELDS}
    return JobRow(
        job_id=job_id,
        **values,
        stage="Pruning",
        min_cost=None,
        min_cost_batch_size=spec.default_batch_size,
        next_trial_number=1,
        rng_state=None,
        created_at=now,
        updated_at=now,
    )


async def register_job(db: Database, spec: JobSpec, *, now: datetime) -> Registration:
    """Create a job, or confirm that an identical one exists (idempotent).

    Zeus's client registers at the start of every recurrence, so the common
    case is a job that exists: answered from one lock-free read. Registered
    specs never change, so that read cannot be stale in a way that matters.
    """
    if spec.job_id is not None:
        async with db.autocommit() as conn:
            existing = await repo.get_job(conn, spec.job_id)
            if existing is not None:
                return await _existing(conn, spec, existing)
    async with db.transaction() as conn:
        if spec.job_id is None:
            # 32 random bits; on the rare collision, draw again.
            while True:
                job_id = f"{spec.job_id_prefix}-{secrets.token_hex(4)}"
                if await repo.insert_job_if_absent(
                    conn, _new_job(spec, job_id, now), spec.batch_sizes
                ):
                    break
        else:
            job_id = spec.job_id
            if not await repo.insert_job_if_absent(
                conn, _new_job(spec, job_id, now), spec.batch_sizes
            ):
                existing = await repo.get_job(conn, job_id)
                if existing is None:  # deleted between our insert and this read: rare
                    raise JobSpecMismatchError(f"Job {job_id!r} changed concurrently; retry.")
                return await _existing(conn, spec, existing)
    logger.info("registered job %s", job_id)
    job = CreatedJob.model_construct(**{**spec.model_dump(), "job_id": job_id})
    return Registration(job, created=True)


async def _existing(conn: Connection, spec: JobSpec, existing: JobRow) -> Registration:
    """Compare a registration with the job registered under its id: 200 or 409."""
    job_id = existing.job_id
    registered = created_job(existing, await repo.batch_sizes(conn, job_id))
    differing = [
        name
        for name in (*SPEC_FIELDS, "batch_sizes")
        if getattr(registered, name) != getattr(spec, name)
    ]
    if differing:
        raise JobSpecMismatchError(
            f"Job {job_id!r} is already registered with a different "
            f"{', '.join(differing)}. Use a new job_id for a different configuration."
        )
    return Registration(registered, created=False)


async def delete_job(db: Database, job_id: str) -> None:
    """Delete a job with its batch sizes, trials and arms."""
    async with db.transaction() as conn:
        if await repo.get_job(conn, job_id, for_update=True) is None:
            raise JobNotFoundError(job_id)
        await repo.delete_job(conn, job_id)
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


async def dispatch_trial(
    db: Database, job_id: str, *, now: datetime, trial_timeout_s: int = 0
) -> TrialId:
    """Choose the next batch size and record it as a new trial.

    With ``trial_timeout_s``, pruning explorations running longer than that
    are marked Failed first (under the job's lock), so they are explored again.
    """
    async with db.transaction() as conn:
        job = await repo.get_job(conn, job_id, for_update=True)
        if job is None:
            raise JobNotFoundError(job_id)
        in_bandit = job.stage == "MAB"
        if in_bandit:
            params, explorations, arms = job_params(job), {}, await repo.arms(conn, job_id)
        else:
            if trial_timeout_s > 0:
                stale_before = now - timedelta(seconds=trial_timeout_s)
                if await repo.expire_explorations(
                    conn, job_id, started_before=stale_before, now=now
                ):
                    logger.warning("job %s: explorations started before %s expired", job_id,
                                   stale_before.isoformat())  # fmt: skip
            params = job_params(job, tuple(await repo.batch_sizes(conn, job_id)))
            explorations, arms = await repo.explorations(conn, job_id), []
        rng = _generator(job)
        try:
            decision = bandit.decide(
                params,
                in_bandit_stage=in_bandit,
                min_cost_batch_size=job.min_cost_batch_size,
                explorations=explorations,
                arms=arms,
                rng=rng,
            )
        except bandit.NoConvergedBatchSizeError as exc:
            raise NoConvergedBatchSizeError(str(exc)) from exc
        # The trial number comes from the job's counter, under its row lock.
        number = job.next_trial_number
        changes: dict[str, Any] = {"next_trial_number": number + 1, "updated_at": now}
        if decision.new_arms is not None:
            await repo.insert_arms(conn, job_id, decision.new_arms)
            changes["stage"] = "MAB"
            logger.info("job %s enters the bandit stage with arms %s", job_id,
                        [a.batch_size for a in decision.new_arms])  # fmt: skip
        if job.mab_seed is not None and decision.trial_type == "MAB":
            changes["rng_state"] = dict(rng.bit_generator.state)
        await repo.update_job(conn, job_id, **changes)
        await repo.insert_trial(conn, job_id, number, decision.batch_size, decision.trial_type, now)
    logger.info("job %s trial %d: %s batch size %d", job_id, number, decision.trial_type,
                decision.batch_size)  # fmt: skip
    metrics.trial_dispatched(decision.trial_type)
    return TrialId.model_construct(
        job_id=job_id, batch_size=decision.batch_size, trial_number=number
    )


# ------------------------------------------------------------------ report


async def _load_trial(
    conn: Connection, key: TrialId, *, for_update: bool = False
) -> tuple[JobRow, TrialRow]:
    """The job and trial a request names, checked against the dispatched batch size."""
    job, trial = await repo.get_job_and_trial(
        conn, key.job_id, key.trial_number, for_update=for_update
    )
    if job is None:
        raise JobNotFoundError(key.job_id)
    if trial is None:
        raise TrialNotFoundError(key.job_id, key.trial_number)
    if trial.batch_size != key.batch_size:
        raise BatchSizeMismatchError(
            f"Trial {key.trial_number} of job {key.job_id!r} was dispatched with batch size "
            f"{trial.batch_size}, not {key.batch_size}."
        )
    return job, trial


def _answer_for_ended(trial: TrialRow) -> ReportResponse:
    """A report on an ended trial changes nothing; a retry gets the same answer."""
    if trial.status == "Succeeded":
        return ReportResponse(
            stop_train=True,
            converged=bool(trial.converged),
            message=f"The result of trial {trial.trial_number} was already reported.",
        )
    return ReportResponse(
        stop_train=True,
        converged=False,
        message=f"Trial {trial.trial_number} was ended without a result.",
    )


def _judge(job: JobRow, trial: TrialRow, result: TrainingResult) -> Verdict:
    return bandit.judge_report(
        job_params(job),
        min_cost=job.min_cost,
        batch_size=trial.batch_size,
        time=result.time,
        energy=result.energy,
        metric=result.metric,
        current_epoch=result.current_epoch,
    )


async def report_result(db: Database, result: TrainingResult, *, now: datetime) -> ReportResponse:
    """Judge one epoch report; a final one records the result and teaches the bandit.

    Most reports only say "keep training" and change nothing, so they are
    judged on one lock-free read. Only a report that ends the trial takes
    the job's lock, and is judged again on what it finds under the lock.
    """
    async with db.autocommit() as conn:
        job, trial = await _load_trial(conn, result)
    if trial.status != "Dispatched":
        metrics.report_answered(metrics.ALREADY_ENDED)
        return _answer_for_ended(trial)  # ended trials never change again
    verdict = _judge(job, trial, result)
    if not verdict.stop_train:
        metrics.report_answered(verdict.reason)
        return ReportResponse(stop_train=False, converged=False, message=verdict.message)

    async with db.transaction() as conn:
        job, trial = await _load_trial(conn, result, for_update=True)
        if trial.status != "Dispatched":  # another request ended it meanwhile
            metrics.report_answered(metrics.ALREADY_ENDED)
            return _answer_for_ended(trial)
        verdict = _judge(job, trial, result)
        if not verdict.stop_train:  # min_cost moved meanwhile: a rare race
            metrics.report_answered(verdict.reason)
            return ReportResponse(stop_train=False, converged=False, message=verdict.message)
        await _record_result(conn, job, trial, result, verdict, now)
    logger.info("job %s trial %d ended: converged=%s cost=%.6g", job.job_id, trial.trial_number,
                verdict.converged, verdict.cost)  # fmt: skip
    metrics.report_answered(verdict.reason)
    return ReportResponse(stop_train=True, converged=verdict.converged, message=verdict.message)


async def _record_result(
    conn: Connection,
    job: JobRow,
    trial: TrialRow,
    result: TrainingResult,
    verdict: Verdict,
    now: datetime,
) -> None:
    await repo.finish_trial(
        conn, trial, time=result.time, energy=result.energy, cost=verdict.cost,
        converged=verdict.converged, now=now,
    )  # fmt: skip
    stats = await repo.add_reward(conn, job.job_id, trial.batch_size, bandit.reward(verdict.cost))
    changes: dict[str, Any] = {"updated_at": now}
    # Only converged trials set the bar (Zeus lets failed ones lower it too).
    if verdict.converged and (job.min_cost is None or verdict.cost < job.min_cost):
        changes.update(min_cost=verdict.cost, min_cost_batch_size=trial.batch_size)
    await repo.update_job(conn, job.job_id, **changes)
    # In the bandit stage every result of an arm refits it, whatever the
    # trial's type (a late pruning-stage Concurrent trial included).
    if job.stage == "MAB" and await repo.is_arm(conn, job.job_id, trial.batch_size):
        costs = None
        if job.window_size > 0:
            costs = await repo.recent_costs(conn, job.job_id, trial.batch_size, job.window_size)
        await repo.save_arm(
            conn, job.job_id, _refit(job_params(job), trial.batch_size, stats, costs)
        )


def _refit(
    params: JobParams, batch_size: int, stats: bandit.RewardStats, costs: list[float] | None
) -> ArmPosterior:
    """Window 0: the running statistics of all results; else the last ``window_size``."""
    if costs is None:
        return bandit.fit_arm_from_stats(
            batch_size, stats, prior_mean=params.mab_prior_mean,
            prior_precision=params.mab_prior_precision,
        )  # fmt: skip
    return bandit.fit_arm(
        batch_size,
        [bandit.reward(c) for c in costs],
        prior_mean=params.mab_prior_mean,
        prior_precision=params.mab_prior_precision,
    )


# --------------------------------------------------------------------- end


async def end_trial(db: Database, trial_id: TrialId, *, now: datetime) -> TrialRead:
    """Mark a trial Failed unless a final report already ended it (idempotent).

    Zeus's client sends this at exit, usually after the final report ended
    the trial: that case is answered from one lock-free read.
    """
    async with db.autocommit() as conn:
        _, trial = await _load_trial(conn, trial_id)
    if trial.status != "Dispatched":
        return trial_read(trial)  # ended trials never change again
    async with db.transaction() as conn:
        job, trial = await _load_trial(conn, trial_id, for_update=True)
        if trial.status != "Dispatched":
            return trial_read(trial)
        await repo.fail_trial(conn, trial, now)
        await repo.update_job(conn, job.job_id, updated_at=now)
    logger.info("job %s trial %d ended without a result", job.job_id, trial.trial_number)
    metrics.trial_ended("Failed")
    ended = replace(trial, status="Failed", end_timestamp=max(now, trial.start_timestamp))
    return trial_read(ended)
