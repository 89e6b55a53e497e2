"""The only module that speaks SQL.

Every query is bounded by the job's configuration, never by its history:
lookups by primary key, the pruning walk's non-Failed explorations (at most
rounds x batch sizes rows), one job's arms, the last ``window_size`` results
of one batch size, and keyset pages. Each one has an index (models.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy import insert as insert_into
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from app.bandit import ArmPosterior, Exploration, RewardStats
from app.models import Arm, BatchSize, Job, Trial


class Repository:
    """Reads and writes of one session; keeps no cache of its own."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    # ------------------------------------------------------------------ jobs

    async def get_job(self, job_id: str, *, for_update: bool = False) -> Job | None:
        """Load a job; ``for_update`` takes its row lock until the transaction ends."""
        query = select(Job).where(Job.job_id == job_id)
        if for_update:
            # Serialises every request that changes this job, across workers
            # and replicas (SPEC 7). SQLite ignores it: BEGIN IMMEDIATE already
            # serialises writers (db.py).
            query = query.with_for_update()
        return (await self.session.execute(query)).scalar_one_or_none()

    async def insert_job_if_absent(
        self, values: dict[str, Any], batch_sizes: Sequence[int]
    ) -> bool:
        """Insert a job and its batch sizes unless the job_id exists; True if inserted.

        ON CONFLICT DO NOTHING instead of select-then-insert: two concurrent
        registrations of one id cannot both insert, and registrations of
        different ids never wait for each other.
        """
        dialect = self.session.bind.dialect.name if self.session.bind else "postgresql"
        insert = pg_insert if dialect == "postgresql" else sqlite_insert
        statement = (
            insert(Job)
            .values(**values)
            .on_conflict_do_nothing(index_elements=[Job.job_id])
            .returning(Job.job_id)
        )
        inserted = (await self.session.execute(statement)).scalar_one_or_none()
        if inserted is None:
            return False
        await self.session.execute(
            insert_into(BatchSize),
            [
                {"job_id": values["job_id"], "batch_size": bs, "reward_count": 0,
                 "reward_mean": 0.0, "reward_m2": 0.0}
                for bs in batch_sizes
            ],
        )  # fmt: skip
        return True

    async def batch_sizes(self, job_id: str) -> list[int]:
        query = (
            select(BatchSize.batch_size)
            .where(BatchSize.job_id == job_id)
            .order_by(BatchSize.batch_size)
        )
        return list((await self.session.execute(query)).scalars())

    async def delete_job(self, job_id: str) -> bool:
        """Delete a job; its batch sizes, trials and arms go by cascade."""
        result = await self.session.execute(delete(Job).where(Job.job_id == job_id))
        return bool(result.rowcount)  # type: ignore[attr-defined]

    async def list_jobs(self, *, prefix: str | None, after: str | None, limit: int) -> list[Job]:
        query = select(Job).order_by(Job.job_id).limit(limit)
        if prefix is not None:
            query = query.where(Job.job_id_prefix == prefix)
        if after is not None:
            query = query.where(Job.job_id > after)
        return list((await self.session.execute(query)).scalars())

    # ---------------------------------------------------------------- trials

    async def add_trial(self, job: Job, batch_size: int, trial_type: str, now: datetime) -> int:
        """Dispatch a trial numbered from the job's counter; the job must be locked."""
        number = job.next_trial_number
        job.next_trial_number = number + 1
        job.updated_at = now
        self.session.add(
            Trial(
                job_id=job.job_id,
                trial_number=number,
                batch_size=batch_size,
                type=trial_type,
                status="Dispatched",
                start_timestamp=now,
            )
        )
        await self.session.flush()
        return number

    async def get_trial(self, job_id: str, trial_number: int) -> Trial | None:
        return await self.session.get(Trial, (job_id, trial_number))

    async def list_trials(
        self,
        job_id: str,
        *,
        status: str | None,
        trial_type: str | None,
        after: int | None,
        limit: int,
    ) -> list[Trial]:
        query = (
            select(Trial).where(Trial.job_id == job_id).order_by(Trial.trial_number).limit(limit)
        )
        if status is not None:
            query = query.where(Trial.status == status)
        if trial_type is not None:
            query = query.where(Trial.type == trial_type)
        if after is not None:
            query = query.where(Trial.trial_number > after)
        return list((await self.session.execute(query)).scalars())

    async def explorations(self, job_id: str) -> dict[int, list[Exploration]]:
        """Non-Failed Exploration trials per batch size, in trial order.

        At most num_pruning_rounds per batch size: a (batch size, round) pair
        is dispatched again only after its previous exploration Failed.
        """
        query = (
            select(Trial.trial_number, Trial.batch_size, Trial.status, Trial.converged, Trial.cost)
            .where(
                Trial.job_id == job_id,
                Trial.type == "Exploration",
                Trial.status.in_(("Dispatched", "Succeeded")),
            )
            .order_by(Trial.trial_number)
        )
        by_batch_size: dict[int, list[Exploration]] = defaultdict(list)
        for number, bs, status, converged, cost in await self.session.execute(query):
            by_batch_size[bs].append(
                Exploration(number, bs, status == "Dispatched", converged, cost)
            )
        return dict(by_batch_size)

    async def recent_costs(self, job_id: str, batch_size: int, limit: int) -> list[float]:
        """Costs of the last ``limit`` Succeeded trials of a batch size, oldest first."""
        query = (
            select(Trial.cost)
            .where(
                Trial.job_id == job_id,
                Trial.batch_size == batch_size,
                Trial.status == "Succeeded",
            )
            .order_by(Trial.trial_number.desc())
            .limit(limit)
        )
        costs = [float(c) for c in (await self.session.execute(query)).scalars() if c is not None]
        costs.reverse()
        return costs

    # ------------------------------------------------ reward stats and arms

    async def add_reward(self, job_id: str, batch_size: int, value: float) -> RewardStats:
        """Fold one reward into the batch size's running statistics."""
        row = await self.session.get(BatchSize, (job_id, batch_size))
        assert row is not None, "trial batch sizes reference batch_size rows"
        stats = RewardStats(row.reward_count, row.reward_mean, row.reward_m2).add(value)
        row.reward_count, row.reward_mean, row.reward_m2 = stats.count, stats.mean, stats.m2
        return stats

    async def arms(self, job_id: str) -> list[ArmPosterior]:
        query = select(Arm).where(Arm.job_id == job_id).order_by(Arm.batch_size)
        return [
            ArmPosterior(
                a.batch_size, a.param_mean, a.param_precision, a.reward_precision,
                a.num_observations,
            )
            for a in (await self.session.execute(query)).scalars()
        ]  # fmt: skip

    async def is_arm(self, job_id: str, batch_size: int) -> bool:
        return await self.session.get(Arm, (job_id, batch_size)) is not None

    async def insert_arms(self, job_id: str, arms: Sequence[ArmPosterior]) -> None:
        await self.session.execute(
            insert_into(Arm), [{"job_id": job_id, **_arm_values(a)} for a in arms]
        )

    async def save_arm(self, job_id: str, arm: ArmPosterior) -> None:
        await self.session.execute(
            update(Arm)
            .where(Arm.job_id == job_id, Arm.batch_size == arm.batch_size)
            .values(**_arm_values(arm))
        )

    # ------------------------------------------------------------ readiness

    async def ping(self) -> None:
        await self.session.execute(select(func.count()).select_from(select(1).subquery()))


def _arm_values(arm: ArmPosterior) -> dict[str, Any]:
    return {
        "batch_size": arm.batch_size,
        "param_mean": arm.param_mean,
        "param_precision": arm.param_precision,
        "reward_precision": arm.reward_precision,
        "num_observations": arm.num_observations,
    }
