"""Job groups: the group row, its statistics per batch size (atomic increments), members."""

from __future__ import annotations

import operator
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Float,
    Integer,
    Row,
    and_,
    bindparam,
    case,
    literal,
    select,
    union_all,
    update,
)
from sqlalchemy.engine import Connection

from app.bandit import GroupBatchSize, GroupKnowledge
from app.store.rows import JobRow, insert_if_absent, page
from app.store.tables import batch_size, group_batch_size, job, job_group

GroupRow = Row[Any]  # a row of the job_group table

_INSERT_GROUP = insert_if_absent(job_group, job_group.c.name)
_GROUP = select(job_group).where(job_group.c.name == bindparam("name"))
_INSERT_GROUP_BATCH_SIZES = insert_if_absent(group_batch_size)


def join_group(
    conn: Connection,
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
    conn.execute(_INSERT_GROUP[conn.dialect.name], values)
    row = (conn.execute(_GROUP, {"name": name})).one()
    conn.execute(
        _INSERT_GROUP_BATCH_SIZES[conn.dialect.name],
        [
            {"group_name": name, "batch_size": bs, "runs": 0, "exhausted": 0, "converged": 0,
             "min_epochs": None, "total_epochs": 0}
            for bs in batch_sizes
        ],
    )  # fmt: skip
    return row


def group_row(conn: Connection, name: str) -> GroupRow | None:
    return (conn.execute(_GROUP, {"name": name})).first()


_GROUP_STATS = (
    select(group_batch_size)
    .where(group_batch_size.c.group_name == bindparam("name"))
    .order_by(group_batch_size.c.batch_size)
)


def _group_batch_size(r: Row[Any]) -> GroupBatchSize:
    return GroupBatchSize(r.runs, r.exhausted, r.converged, r.min_epochs, r.total_epochs)


def group_stats(conn: Connection, name: str) -> dict[int, GroupBatchSize]:
    """A group's statistics per batch size, ascending."""
    rows = conn.execute(_GROUP_STATS, {"name": name})
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


def group_knowledge(
    conn: Connection, name: str, job_id: str, *, from_batch_size: int = 0
) -> GroupKnowledge:
    """What a group's job knows from its group (the batch sizes >= ``from_batch_size``)."""
    rows = conn.execute(_KNOWLEDGE, {"name": name, "job_id": job_id, "from": from_batch_size})
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


def sibling_best(conn: Connection, name: str, job_id: str) -> int | None:
    """The best batch size of the group's other job with the most trials (None: none)."""
    row = (conn.execute(_SIBLING, {"name": name, "job_id": job_id})).first()
    return None if row is None else int(row.min_cost_batch_size)


def group_members(conn: Connection, name: str, *, after: str | None, limit: int) -> list[JobRow]:
    """A page of a group's jobs, by job_id (ix_job_group)."""
    statement = page(
        select(job).where(job.c.group == name).order_by(job.c.job_id).limit(limit),
        (job.c.job_id, operator.gt, after),
    )
    return list((conn.execute(statement)).all())


# A group's statistics of a batch size: atomic increments (and a running
# minimum), never values computed from a read, so that final reports of
# different jobs of one group, each under its own job's lock, never lose
# one another's update. PostgreSQL re-evaluates the SET on the newest row
# version when it waited for another writer's commit; SQLite has one writer.
_epochs = bindparam("g_epochs", type_=Integer)
_converged_now = bindparam("g_converged", type_=Integer)
COUNT_IN_GROUP = (
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


@dataclass(frozen=True, slots=True)
class GroupResult:
    """What a final report of a group's job adds to the group's statistics."""

    group: str
    converged: bool
    exhausted: bool
    epochs: int
    predicted_cost: float | None
