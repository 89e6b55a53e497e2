"""Use cases: one function per request, one transaction and one commit each.

Every use case that changes a job first takes that job's row lock, always in
the same order (job row, then its trials and arms), so requests on one job
run one at a time across processes and replicas, and never deadlock.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy.ext.asyncio import AsyncSession

from app import bandit
from app.bandit import ArmPosterior, JobParams, Verdict
from app.errors import (
    BatchSizeMismatchError,
    JobNotFoundError,
    JobSpecMismatchError,
    NoConvergedBatchSizeError,
    TrialNotFoundError,
)
from app.models import Job, Trial
from app.repository import Repository
from app.schemas import (
    CreatedJob,
    JobSpec,
    ReportResponse,
    TrainingResult,
    TrialId,
    TrialRead,
)

logger = logging.getLogger(__name__)

# Fields of a registration that must match for a re-registration to be "the same job".
SPEC_FIELDS = tuple(name for name in JobSpec.model_fields if name not in {"job_id", "batch_sizes"})


def utcnow() -> datetime:
    return datetime.now(UTC)


def job_params(job: Job, batch_sizes: tuple[int, ...] = ()) -> JobParams:
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


def created_job(job: Job, batch_sizes: list[int]) -> CreatedJob:
    values = {name: getattr(job, name) for name in SPEC_FIELDS}
    return CreatedJob.model_construct(job_id=job.job_id, batch_sizes=batch_sizes, **values)


# ------------------------------------------------------------ registration


@dataclass(frozen=True)
class Registration:
    job: CreatedJob
    created: bool


async def register_job(session: AsyncSession, spec: JobSpec, *, now: datetime) -> Registration:
    """Create a job, or confirm that an identical one exists (idempotent)."""
    repo = Repository(session)
    values: dict[str, Any] = {name: getattr(spec, name) for name in SPEC_FIELDS}
    values.update(
        stage="Pruning",
        min_cost=None,
        min_cost_batch_size=spec.default_batch_size,
        next_trial_number=1,
        rng_state=None,
        created_at=now,
        updated_at=now,
    )
    if spec.job_id is None:
        # 32 random bits; on the rare collision, draw again.
        while True:
            job_id = f"{spec.job_id_prefix}-{secrets.token_hex(4)}"
            if await repo.insert_job_if_absent({**values, "job_id": job_id}, spec.batch_sizes):
                break
    else:
        job_id = spec.job_id
        if not await repo.insert_job_if_absent({**values, "job_id": job_id}, spec.batch_sizes):
            existing = await repo.get_job(job_id)
            if existing is None:  # deleted between our insert and read: a rare race
                raise JobSpecMismatchError(f"Job {job_id!r} changed concurrently; retry.")
            registered = created_job(existing, await repo.batch_sizes(job_id))
            await session.rollback()
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
    await session.commit()
    logger.info("registered job %s", job_id)
    return Registration(
        CreatedJob.model_construct(**{**spec.model_dump(), "job_id": job_id}), created=True
    )


async def delete_job(session: AsyncSession, job_id: str) -> None:
    """Delete a job with its batch sizes, trials and arms."""
    repo = Repository(session)
    if await repo.get_job(job_id, for_update=True) is None:
        raise JobNotFoundError(job_id)
    await repo.delete_job(job_id)
    await session.commit()
    logger.info("deleted job %s", job_id)


# ---------------------------------------------------------------- dispatch


def _generator(job: Job) -> np.random.Generator:
    """The job's generator: persisted for seeded jobs, fresh OS entropy otherwise."""
    if job.mab_seed is None:
        return np.random.default_rng()
    rng = np.random.default_rng(job.mab_seed)
    if job.rng_state is not None:
        rng.bit_generator.state = job.rng_state
    return rng


async def dispatch_trial(session: AsyncSession, job_id: str, *, now: datetime) -> TrialId:
    """Choose the next batch size and record it as a new trial."""
    repo = Repository(session)
    job = await repo.get_job(job_id, for_update=True)
    if job is None:
        raise JobNotFoundError(job_id)
    in_bandit = job.stage == "MAB"
    if in_bandit:
        params, explorations, arms = job_params(job), {}, await repo.arms(job_id)
    else:
        params = job_params(job, tuple(await repo.batch_sizes(job_id)))
        explorations, arms = await repo.explorations(job_id), []
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
    if decision.new_arms is not None:
        await repo.insert_arms(job_id, decision.new_arms)
        job.stage = "MAB"
        logger.info("job %s enters the bandit stage with arms %s", job_id,
                    [a.batch_size for a in decision.new_arms])  # fmt: skip
    if job.mab_seed is not None and decision.trial_type == "MAB":
        job.rng_state = dict(rng.bit_generator.state)
    number = await repo.add_trial(job, decision.batch_size, decision.trial_type, now)
    await session.commit()
    logger.info("job %s trial %d: %s batch size %d", job_id, number, decision.trial_type,
                decision.batch_size)  # fmt: skip
    return TrialId(job_id=job_id, batch_size=decision.batch_size, trial_number=number)


# ------------------------------------------------------------------ report


async def _locked_trial(repo: Repository, job_id: str, trial_number: int, batch_size: int
                        ) -> tuple[Job, Trial]:  # fmt: skip
    job = await repo.get_job(job_id, for_update=True)
    if job is None:
        raise JobNotFoundError(job_id)
    trial = await repo.get_trial(job_id, trial_number)
    if trial is None:
        raise TrialNotFoundError(job_id, trial_number)
    if trial.batch_size != batch_size:
        raise BatchSizeMismatchError(
            f"Trial {trial_number} of job {job_id!r} was dispatched with batch size "
            f"{trial.batch_size}, not {batch_size}."
        )
    return job, trial


def _answer_for_ended(trial: Trial) -> ReportResponse:
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


async def report_result(
    session: AsyncSession, result: TrainingResult, *, now: datetime
) -> ReportResponse:
    """Judge one epoch report; a final one records the result and teaches the bandit."""
    repo = Repository(session)
    job, trial = await _locked_trial(repo, result.job_id, result.trial_number, result.batch_size)
    if trial.status != "Dispatched":
        answer = _answer_for_ended(trial)
        await session.rollback()  # rolling back expires the rows: read them first
        return answer
    params = job_params(job)
    verdict = bandit.judge_report(
        params,
        min_cost=job.min_cost,
        batch_size=trial.batch_size,
        time=result.time,
        energy=result.energy,
        metric=result.metric,
        current_epoch=result.current_epoch,
    )
    if not verdict.stop_train:
        await session.rollback()  # nothing changed; release the lock
        return ReportResponse(stop_train=False, converged=False, message=verdict.message)
    await _record_result(repo, job, trial, result, verdict, params, now)
    await session.commit()
    logger.info("job %s trial %d ended: converged=%s cost=%.6g", job.job_id, trial.trial_number,
                verdict.converged, verdict.cost)  # fmt: skip
    return ReportResponse(stop_train=True, converged=verdict.converged, message=verdict.message)


async def _record_result(
    repo: Repository,
    job: Job,
    trial: Trial,
    result: TrainingResult,
    verdict: Verdict,
    params: JobParams,
    now: datetime,
) -> None:
    trial.status = "Succeeded"
    trial.end_timestamp = max(now, trial.start_timestamp)
    trial.time, trial.energy = result.time, result.energy
    trial.cost, trial.converged = verdict.cost, verdict.converged
    stats = await repo.add_reward(job.job_id, trial.batch_size, bandit.reward(verdict.cost))
    # Only converged trials set the bar (Zeus lets failed ones lower it too).
    if verdict.converged and (job.min_cost is None or verdict.cost < job.min_cost):
        job.min_cost, job.min_cost_batch_size = verdict.cost, trial.batch_size
    job.updated_at = now
    await repo.session.flush()
    # In the bandit stage every result of an arm refits it, whatever the
    # trial's type (a late pruning-stage Concurrent trial included).
    if job.stage == "MAB" and await repo.is_arm(job.job_id, trial.batch_size):
        await repo.save_arm(job.job_id, _refit(params, trial.batch_size, stats,
                            await _window(repo, job, trial.batch_size)))  # fmt: skip


async def _window(repo: Repository, job: Job, batch_size: int) -> list[float] | None:
    if job.window_size == 0:
        return None  # the running statistics cover all of history
    return await repo.recent_costs(job.job_id, batch_size, job.window_size)


def _refit(
    params: JobParams, batch_size: int, stats: bandit.RewardStats, costs: list[float] | None
) -> ArmPosterior:
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


# ------------------------------------------------------------------- end


async def end_trial(session: AsyncSession, trial_id: TrialId, *, now: datetime) -> TrialRead:
    """Mark a trial Failed unless a final report already ended it (idempotent)."""
    repo = Repository(session)
    job, trial = await _locked_trial(
        repo, trial_id.job_id, trial_id.trial_number, trial_id.batch_size
    )
    if trial.status == "Dispatched":
        trial.status = "Failed"
        trial.end_timestamp = max(now, trial.start_timestamp)
        job.updated_at = now
        await session.flush()
        logger.info("job %s trial %d ended without a result", job.job_id, trial.trial_number)
    ended = trial_read(trial)
    await session.commit()
    return ended


def trial_read(trial: Trial) -> TrialRead:
    return TrialRead(
        job_id=trial.job_id,
        trial_number=trial.trial_number,
        batch_size=trial.batch_size,
        type=trial.type,
        status=trial.status,
        start_timestamp=trial.start_timestamp,
        end_timestamp=trial.end_timestamp,
        time=trial.time,
        energy=trial.energy,
        cost=trial.cost,
        converged=trial.converged,
    )
