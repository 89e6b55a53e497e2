"""What each dashboard page shows, gathered from the read use cases in app/reads.py.

The dashboard reads only through ``reads.get_job``, ``reads.list_jobs``,
``reads.list_trials``, ``reads.list_arms`` and ``reads.get_group`` (the read
API's own use cases and schemas), so it cannot drift from what GET /jobs/...
and GET /groups/... answer. Trials are read
a page at a time and bounded (TRIAL_WINDOW): a job with a long history shows
its most recent trials, and the page says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from app import reads
from app.bandit import TrialType
from app.dashboard.estimates import (
    CostBand,
    PruningRow,
    Savings,
    best_arm,
    cost_band,
    estimate_savings,
    outcome,
    pruning_rows,
)
from app.errors import JobNotFoundError
from app.http.routes import DatabaseDep
from app.schemas import GroupRead, JobRead, TrialRead

TRIAL_WINDOW = 2000  # trials per job that charts and estimates use
TRIAL_PAGE = 500  # the read API's largest page
JOBS_PER_PAGE = 25
MEMBERS_PER_PAGE = 100  # a group's jobs per page (one per GPU type, or one per run)
TABLE_ROWS = 100  # most recent trials listed in the job page's table

# ``DatabaseDep`` annotates the handle: whatever type the read use cases take.


async def _trials(
    db: DatabaseDep, job_id: str, *, after: int, trial_type: TrialType | None, limit: int
) -> list[TrialRead]:
    """Up to ``limit`` trials numbered above ``after``, in trial-number order."""
    items: list[TrialRead] = []
    cursor: int | None = after
    while cursor is not None and len(items) < limit:
        page = await reads.list_trials(
            db,
            job_id,
            status=None,
            trial_type=trial_type,
            after=cursor,
            limit=min(TRIAL_PAGE, limit - len(items)),
        )
        items.extend(page.items)
        cursor = page.next_after
    return items


async def recent_trials(db: DatabaseDep, job: JobRead) -> list[TrialRead]:
    """The job's last TRIAL_WINDOW trials (trial numbers are contiguous from 1)."""
    after = max(0, job.num_trials - TRIAL_WINDOW)
    return await _trials(db, job.job_id, after=after, trial_type=None, limit=TRIAL_WINDOW)


@dataclass(frozen=True)
class JobRow:
    """A line of the jobs list."""

    job: JobRead
    trials_counted: int
    savings: Savings
    running: int


@dataclass(frozen=True)
class JobsView:
    rows: list[JobRow]
    next_after: str | None


async def jobs_view(db: DatabaseDep, *, after: str | None) -> JobsView:
    """A page of jobs, each with its savings estimate."""
    page = await reads.list_jobs(db, prefix=None, after=after, limit=JOBS_PER_PAGE)
    rows = []
    for summary in page.items:
        try:
            job = await reads.get_job(db, summary.job_id)
            trials = await recent_trials(db, job)
        except JobNotFoundError:  # deleted since the listing: not an error of the page
            continue
        running = sum(1 for t in trials if t.status == "Dispatched")
        savings = estimate_savings(trials, job.default_batch_size)
        rows.append(JobRow(job, len(trials), savings, running))
    return JobsView(rows, page.next_after)


@dataclass(frozen=True)
class JobView:
    """Everything the job page shows."""

    job: JobRead
    trials: list[TrialRead]
    savings: Savings
    bands: list[CostBand]
    best: CostBand | None
    pruning: list[PruningRow]
    running: list[TrialRead]
    last_dispatched: TrialRead | None

    @property
    def windowed(self) -> bool:
        """Whether older trials are left out of the charts and the estimate."""
        return len(self.trials) < self.job.num_trials

    @property
    def table(self) -> list[TrialRead]:
        """The most recent trials first, for the table."""
        return self.trials[::-1][:TABLE_ROWS]

    def chart_data(self) -> dict[str, Any]:
        """What dashboard.js draws (embedded in the page as JSON)."""
        return {
            "batch_sizes": self.job.batch_sizes,
            "default_batch_size": self.job.default_batch_size,
            "default_cost": self.savings.default_cost,
            "trials": [
                {
                    "trial_number": t.trial_number,
                    "batch_size": t.batch_size,
                    "type": t.type,
                    "cost": t.cost,
                    "outcome": outcome(t),
                }
                for t in self.trials
            ],
            "arms": [
                {
                    "batch_size": b.batch_size,
                    "mean": b.mean,
                    "low": b.low,
                    "high": b.high,
                    "num_observations": b.num_observations,
                }
                for b in self.bands
            ],
        }


async def job_view(db: DatabaseDep, job_id: str) -> JobView:
    """A job's trials, arms and pruning outcome (JobNotFoundError when unknown)."""
    job = await reads.get_job(db, job_id)
    trials = await recent_trials(db, job)
    explorations = await _trials(
        db, job_id, after=0, trial_type=TrialType.EXPLORATION, limit=TRIAL_WINDOW
    )
    arms = await reads.list_arms(db, job_id)
    bands = [cost_band(a) for a in arms]
    return JobView(
        job=job,
        trials=trials,
        savings=estimate_savings(trials, job.default_batch_size),
        bands=bands,
        best=best_arm(bands),
        pruning=pruning_rows(job, explorations, [a.batch_size for a in arms]),
        running=[t for t in trials if t.status == "Dispatched"],
        last_dispatched=trials[-1] if trials else None,
    )


async def group_view(db: DatabaseDep, group: str, *, after: str | None) -> GroupRead:
    """A group's shared statistics and a page of its jobs (GroupNotFoundError when unknown).

    The read API's answer is all the page needs: per batch size, what the
    group's jobs learned on every GPU; per member, its GPU, stage and best
    batch size.
    """
    return await reads.get_group(db, group, after=after, limit=MEMBERS_PER_PAGE)
