"""Arms and the batch sizes' statistics, and what a final report writes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, bindparam, func, insert, select, update
from sqlalchemy.engine import Connection

from app.bandit import ArmPosterior, RewardStats
from app.schemas import TrialRead
from app.store.groups import COUNT_IN_GROUP, GroupResult
from app.store.rows import NOW, arm_posterior
from app.store.tables import arm, batch_size, group_batch_size, job, trial
from app.store.trials import FINISH_TRIAL

_ARM_VALUES = (
    arm.c.param_mean,
    arm.c.param_precision,
    arm.c.reward_precision,
    arm.c.num_observations,
)
_ARMS = (
    select(arm.c.batch_size, *_ARM_VALUES)
    .where(arm.c.job_id == bindparam("job_id"))
    .order_by(arm.c.batch_size)
)


def job_arms(conn: Connection, job_id: str) -> tuple[ArmPosterior, ...]:
    """A job's arms, ascending."""
    return tuple(arm_posterior(r._mapping) for r in conn.execute(_ARMS, {"job_id": job_id}))


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
_SAVE_MIN_COST = (
    update(job)
    .where(job.c.job_id == bindparam("k_job_id"))
    .values(
        min_cost=bindparam("min_cost"),
        min_cost_batch_size=bindparam("min_cost_batch_size"),
        updated_at=NOW,
    )
)
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
_FINISHED = FINISH_TRIAL.returning(trial.c.job_id).cte("finished")
_COUNTED = _SAVE_STATS.returning(batch_size.c.job_id).cte("counted")
_REFITTED = _SAVE_ARM.returning(arm.c.job_id).cte("refitted")
_GROUPED = COUNT_IN_GROUP.returning(group_batch_size.c.batch_size).cte("grouped")
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


def record_result(
    conn: Connection,
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
        conn.execute(_RECORD[arm_ is not None, grouped is not None], values)
        return
    for statement in (FINISH_TRIAL, _SAVE_STATS, _SAVE_MIN_COST):
        conn.execute(statement, values)
    if arm_ is not None:
        conn.execute(_SAVE_ARM, values)
    if grouped is not None:
        conn.execute(COUNT_IN_GROUP, values)


_INSERT_ARM = insert(arm).values(
    job_id=bindparam("k_job_id"),
    batch_size=bindparam("k_batch_size"),
    param_mean=bindparam("param_mean"),
    param_precision=bindparam("param_precision"),
    reward_precision=bindparam("reward_precision"),
    num_observations=bindparam("num_observations"),
)


def insert_arms(conn: Connection, job_id: str, arms: Sequence[ArmPosterior]) -> None:
    conn.execute(_INSERT_ARM, [_arm_values(job_id, a) for a in arms])
