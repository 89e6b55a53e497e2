"""Read-side use cases (SPEC section 8): jobs, trials, arms, readiness.

Reads take no locks; each is bounded by a page size or the job's configuration.
"""

from __future__ import annotations

import math

from app import bandit
from app import repository as repo
from app.database import Connection, Database
from app.errors import JobNotFoundError
from app.repository import JobRow
from app.schemas import (
    ArmRead,
    JobPage,
    JobRead,
    JobSummary,
    PruningProgress,
    TrialPage,
)
from app.service import SPEC_FIELDS, job_params, trial_read


def _finite(value: float) -> float | None:
    """JSON has no Infinity; an infinite precision is shown as null (documented)."""
    return value if math.isfinite(value) else None


async def _progress(
    conn: Connection, job: JobRow, batch_sizes: list[int]
) -> PruningProgress | None:
    if job.stage != "Pruning":
        return None
    params = job_params(job, tuple(batch_sizes))
    try:
        step = bandit.pruning_walk(
            params,
            await repo.explorations(conn, job.job_id),
            min_cost_batch_size=job.min_cost_batch_size,
        )
    except bandit.NoConvergedBatchSizeError as exc:
        return PruningProgress(round=exc.round_index, default_batch_size=None, candidates=[])
    state = step.state
    return PruningProgress(
        round=state.round,
        default_batch_size=state.default_batch_size,
        candidates=list(state.candidates),
    )


async def get_job(db: Database, job_id: str) -> JobRead:
    async with db.autocommit() as conn:
        job = await repo.get_job(conn, job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        batch_sizes = await repo.batch_sizes(conn, job_id)
        progress = await _progress(conn, job, batch_sizes)
    return JobRead(
        job_id=job.job_id,
        batch_sizes=batch_sizes,
        **{name: getattr(job, name) for name in SPEC_FIELDS},
        stage=job.stage,  # type: ignore[arg-type]
        min_cost=job.min_cost,
        min_cost_batch_size=job.min_cost_batch_size,
        exploration=progress,
        num_trials=job.next_trial_number - 1,
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


async def list_jobs(db: Database, *, prefix: str | None, after: str | None, limit: int) -> JobPage:
    async with db.autocommit() as conn:
        jobs = await repo.list_jobs(conn, prefix=prefix, after=after, limit=limit + 1)
    items = [
        JobSummary(
            job_id=j.job_id,
            job_id_prefix=j.job_id_prefix,
            stage=j.stage,
            min_cost=j.min_cost,
            min_cost_batch_size=j.min_cost_batch_size,
            num_trials=j.next_trial_number - 1,
            created_at=j.created_at,
        )
        for j in jobs[:limit]
    ]
    return JobPage(items=items, next_after=items[-1].job_id if len(jobs) > limit else None)


async def list_trials(
    db: Database,
    job_id: str,
    *,
    status: str | None,
    trial_type: str | None,
    after: int | None,
    limit: int,
) -> TrialPage:
    async with db.autocommit() as conn:
        if await repo.get_job(conn, job_id) is None:
            raise JobNotFoundError(job_id)
        trials = await repo.list_trials(
            conn, job_id, status=status, trial_type=trial_type, after=after, limit=limit + 1
        )
    items = [trial_read(t) for t in trials[:limit]]
    return TrialPage(
        items=items, next_after=items[-1].trial_number if len(trials) > limit else None
    )


async def list_arms(db: Database, job_id: str) -> list[ArmRead]:
    async with db.autocommit() as conn:
        if await repo.get_job(conn, job_id) is None:
            raise JobNotFoundError(job_id)
        arms = await repo.arms(conn, job_id)
    return [
        ArmRead(
            batch_size=a.batch_size,
            param_mean=a.param_mean,
            param_precision=_finite(a.param_precision),
            reward_precision=_finite(a.reward_precision),
            num_observations=a.num_observations,
        )
        for a in arms
    ]


async def schema_revision(db: Database) -> str | None:
    """The database's migration revision (None before the first migration)."""
    async with db.autocommit() as conn:
        return await repo.schema_revision(conn)
