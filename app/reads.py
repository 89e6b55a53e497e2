"""Read-side use cases (SPEC section 8): jobs, trials, arms, readiness.

Reads take no locks; each is bounded by a page size or the job's configuration.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Concatenate, ParamSpec, TypeVar

from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from app import bandit
from app.bandit import GroupBatchSize, Stage, TrialStatus, TrialType
from app.errors import GroupNotFoundError, JobNotFoundError
from app.schemas import (
    JOB_SPEC_FIELDS,
    ArmRead,
    GroupBatchSizeRead,
    GroupMember,
    GroupRead,
    JobPage,
    JobRead,
    JobSummary,
    PruningDeadEnd,
    PruningProgress,
    TrialPage,
)
from app.store import arms, groups, jobs, trials
from app.store.engine import lock_free
from app.store.rows import JobRow

P = ParamSpec("P")
T = TypeVar("T")


def _finite(value: float) -> float | None:
    """JSON has no Infinity; an infinite precision is shown as null (documented)."""
    return value if math.isfinite(value) else None


def _pruning(
    conn: Connection, state: jobs.JobState
) -> tuple[PruningProgress | None, PruningDeadEnd | None]:
    """The pruning round under way (None in the bandit stage), and a dead end if pruning had one.

    Both come from walking the job's explorations again (SPEC section 5). A
    group's job walks with its group's statistics as they are now, which may
    differ from those its dispatches read.
    """
    job = state.job
    if job.stage != Stage.PRUNING and state.params.num_pruning_rounds == 0:
        return None, None
    never: frozenset[int] = frozenset()
    if job.group is not None:
        never = groups.group_knowledge(conn, job.group, job.job_id).never_converged()
    step = bandit.pruning_walk(
        state.params,
        trials.explorations(conn, job.job_id),
        min_cost_batch_size=job.min_cost_batch_size,
        start_batch_size=job.start_batch_size,
        never_converged=never,
    )
    dead_end = None
    if step.dead_end is not None:
        dead_end = PruningDeadEnd(
            round=step.dead_end.round,
            batch_sizes=list(step.dead_end.arms),
            message=step.dead_end.message,
        )
    if job.stage != Stage.PRUNING:
        return None, dead_end
    progress = PruningProgress(
        round=step.state.round,
        default_batch_size=step.state.default_batch_size,
        candidates=list(step.state.candidates),
        walk=step.state.attempt + 1,
    )
    return progress, dead_end


async def get_job(engine: AsyncEngine, job_id: str) -> JobRead:
    state, (progress, dead_end) = await lock_free(engine, _job, job_id)
    job = state.job
    return JobRead(
        job_id=job.job_id,
        batch_sizes=list(state.batch_sizes),
        **{name: getattr(job, name) for name in JOB_SPEC_FIELDS},
        stage=job.stage,
        min_cost=job.min_cost,
        min_cost_batch_size=job.min_cost_batch_size,
        exploration=progress,
        pruning_dead_end=dead_end,
        num_trials=job.next_trial_number - 1,
        created_at=job.created_at,
        updated_at=job.updated_at,
    )


def _job(
    conn: Connection, job_id: str
) -> tuple[jobs.JobState, tuple[PruningProgress | None, PruningDeadEnd | None]]:
    state = jobs.load_job(conn, job_id)
    if state is None:
        raise JobNotFoundError(job_id)
    return state, _pruning(conn, state)


async def list_jobs(
    engine: AsyncEngine, *, prefix: str | None, after: str | None, limit: int
) -> JobPage:
    rows = await lock_free(engine, jobs.list_jobs, prefix=prefix, after=after, limit=limit + 1)
    items = [
        JobSummary(
            job_id=j.job_id,
            job_id_prefix=j.job_id_prefix,
            stage=j.stage,
            policy=j.policy,
            group=j.group,
            min_cost=j.min_cost,
            min_cost_batch_size=j.min_cost_batch_size,
            num_trials=j.next_trial_number - 1,
            created_at=j.created_at,
        )
        for j in rows[:limit]
    ]
    return JobPage(items=items, next_after=items[-1].job_id if len(rows) > limit else None)


async def list_trials(
    engine: AsyncEngine,
    job_id: str,
    *,
    status: TrialStatus | None,
    trial_type: TrialType | None,
    after: int | None,
    limit: int,
    lease: bandit.Lease | None = None,
) -> TrialPage:
    """A page of a job's trials; with ``lease``, each Dispatched one's lease expiry."""
    found = await lock_free(
        engine,
        _of_job,
        trials.list_trials,
        job_id,
        status=status,
        trial_type=trial_type,
        after=after,
        limit=limit + 1,
        lease=lease,
    )
    items = found[:limit]
    return TrialPage(items=items, next_after=items[-1].trial_number if len(found) > limit else None)


async def list_arms(engine: AsyncEngine, job_id: str) -> list[ArmRead]:
    posteriors = await lock_free(engine, _of_job, arms.job_arms, job_id)
    return [
        ArmRead(
            batch_size=a.batch_size,
            param_mean=a.param_mean,
            param_precision=_finite(a.param_precision),
            reward_precision=_finite(a.reward_precision),
            num_observations=a.num_observations,
        )
        for a in posteriors
    ]


def _of_job(
    conn: Connection,
    read: Callable[Concatenate[Connection, str, P], T],
    job_id: str,
    *args: P.args,
    **kwargs: P.kwargs,
) -> T:
    """``read(conn, job_id, ...)``, or 404 if there is no such job."""
    if not jobs.job_exists(conn, job_id):
        raise JobNotFoundError(job_id)
    return read(conn, job_id, *args, **kwargs)


async def get_group(
    engine: AsyncEngine, group: str, *, after: str | None = None, limit: int = 100
) -> GroupRead:
    """A group's definition of converged, its statistics per batch size, a page of its jobs."""
    row, stats, members = await lock_free(engine, _group, group, after, limit + 1)
    return GroupRead(
        group=row.name,
        target_metric=row.target_metric,
        higher_is_better_metric=row.higher_is_better_metric,
        max_epochs=row.max_epochs,
        created_at=row.created_at,
        batch_sizes=[
            GroupBatchSizeRead(
                batch_size=bs,
                runs=s.runs,
                exhausted=s.exhausted,
                converged=s.converged,
                never_converged=s.never_converged,
                min_epochs=s.min_epochs,
                mean_epochs=s.mean_epochs,
            )
            for bs, s in stats.items()
        ],
        members=[
            GroupMember(
                job_id=j.job_id,
                gpu_model=j.gpu_model,
                number_of_gpus=j.number_of_gpus,
                policy=j.policy,
                stage=j.stage,
                num_trials=j.next_trial_number - 1,
                min_cost=j.min_cost,
                best_batch_size=j.min_cost_batch_size if j.min_cost is not None else None,
            )
            for j in members[:limit]
        ],
        next_after=members[limit - 1].job_id if len(members) > limit else None,
    )


def _group(
    conn: Connection, group: str, after: str | None, limit: int
) -> tuple[groups.GroupRow, dict[int, GroupBatchSize], list[JobRow]]:
    row = groups.group_row(conn, group)
    if row is None:
        raise GroupNotFoundError(group)
    stats = groups.group_stats(conn, group)
    return row, stats, groups.group_members(conn, group, after=after, limit=limit)
