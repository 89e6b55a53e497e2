"""The only module that speaks SQL.

Every query is bounded by the job's configuration, never by its history:
lookups by primary key, the pruning walk's non-Failed explorations (at most
rounds x batch sizes rows), one job's arms, the last ``window_size`` results
of one batch size, and keyset pages. Each one has an index (models.py).
The SQL is plain and portable: numbered ``$n`` parameters, and ``FOR UPDATE``
where PostgreSQL must lock (database.py adapts both for SQLite).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from app.bandit import ArmPosterior, Exploration, RewardStats
from app.database import Connection, Row


def _timestamp(value: datetime | str) -> datetime:
    """PostgreSQL returns aware datetimes; SQLite ISO 8601 text in UTC."""
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _optional_bool(value: Any) -> bool | None:
    return None if value is None else bool(value)


@dataclass(frozen=True, slots=True)
class JobRow:
    job_id: str
    job_id_prefix: str
    default_batch_size: int
    eta_knob: float
    beta_knob: float | None
    target_metric: float
    higher_is_better_metric: bool
    max_epochs: int
    num_pruning_rounds: int
    window_size: int
    mab_prior_mean: float
    mab_prior_precision: float
    mab_num_explorations: int
    mab_seed: int | None
    max_power: float
    number_of_gpus: int
    gpu_model: str
    stage: str
    min_cost: float | None
    min_cost_batch_size: int
    next_trial_number: int
    rng_state: dict[str, Any] | None
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Row, prefix: str = "") -> JobRow:
        values = {f: row[prefix + f] for f in JOB_COLUMNS}
        values["higher_is_better_metric"] = bool(values["higher_is_better_metric"])
        state = values["rng_state"]
        values["rng_state"] = json.loads(state) if isinstance(state, str) else state
        values["created_at"] = _timestamp(values["created_at"])
        values["updated_at"] = _timestamp(values["updated_at"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class TrialRow:
    job_id: str
    trial_number: int
    batch_size: int
    type: str
    status: str
    start_timestamp: datetime
    end_timestamp: datetime | None
    time: float | None
    energy: float | None
    cost: float | None
    converged: bool | None

    @classmethod
    def from_row(cls, row: Row, prefix: str = "") -> TrialRow:
        values = {f: row[prefix + f] for f in TRIAL_COLUMNS}
        values["start_timestamp"] = _timestamp(values["start_timestamp"])
        end = values["end_timestamp"]
        values["end_timestamp"] = None if end is None else _timestamp(end)
        values["converged"] = _optional_bool(values["converged"])
        return cls(**values)


JOB_COLUMNS = tuple(f.name for f in fields(JobRow))
TRIAL_COLUMNS = tuple(f.name for f in fields(TrialRow))
_JOB_SELECT = ", ".join(JOB_COLUMNS)
_TRIAL_SELECT = ", ".join(TRIAL_COLUMNS)


# -------------------------------------------------------------------- jobs


async def get_job(conn: Connection, job_id: str, *, for_update: bool = False) -> JobRow | None:
    """Load a job; ``for_update`` holds its row lock until the transaction ends."""
    # The lock serialises every request that changes this job, across
    # workers and replicas (SPEC 7); SQLite's BEGIN IMMEDIATE does it there.
    lock = " FOR UPDATE" if for_update else ""
    row = await conn.fetchrow(f"SELECT {_JOB_SELECT} FROM job WHERE job_id = $1{lock}", job_id)
    return None if row is None else JobRow.from_row(row)


_JOB_AND_TRIAL = (
    "SELECT "
    + ", ".join(f"j.{c} AS j_{c}" for c in JOB_COLUMNS)
    + ", "
    + ", ".join(f"t.{c} AS t_{c}" for c in TRIAL_COLUMNS)
    + " FROM job j LEFT JOIN trial t ON t.job_id = j.job_id AND t.trial_number = $2"
    " WHERE j.job_id = $1"
)


async def get_job_and_trial(
    conn: Connection, job_id: str, trial_number: int, *, for_update: bool = False
) -> tuple[JobRow | None, TrialRow | None]:
    """A job and one of its trials in one round trip (locking the job row if asked)."""
    lock = " FOR UPDATE OF j" if for_update else ""
    row = await conn.fetchrow(_JOB_AND_TRIAL + lock, job_id, trial_number)
    if row is None:
        return None, None
    trial = None if row["t_trial_number"] is None else TrialRow.from_row(row, "t_")
    return JobRow.from_row(row, "j_"), trial


_INSERT_JOB = (
    f"INSERT INTO job ({', '.join(JOB_COLUMNS)}) "
    f"VALUES ({', '.join(f'${i}' for i in range(1, len(JOB_COLUMNS) + 1))}) "
    "ON CONFLICT (job_id) DO NOTHING RETURNING job_id"
)


async def insert_job_if_absent(conn: Connection, job: JobRow, batch_sizes: Sequence[int]) -> bool:
    """Insert a job and its batch sizes unless the job_id exists; True if inserted.

    ON CONFLICT DO NOTHING rather than select-then-insert: two concurrent
    registrations of one id cannot both insert (the second waits for the
    first to commit, then does nothing), and different ids never wait.
    """
    values = [getattr(job, c) for c in JOB_COLUMNS]
    values[JOB_COLUMNS.index("rng_state")] = None
    inserted = await conn.fetchval(_INSERT_JOB, *values)
    if inserted is None:
        return False
    await conn.executemany(
        "INSERT INTO batch_size (job_id, batch_size, reward_count, reward_mean, reward_m2)"
        " VALUES ($1, $2, 0, 0.0, 0.0)",
        [(job.job_id, bs) for bs in batch_sizes],
    )
    return True


async def batch_sizes(conn: Connection, job_id: str) -> list[int]:
    rows = await conn.fetch(
        "SELECT batch_size FROM batch_size WHERE job_id = $1 ORDER BY batch_size", job_id
    )
    return [int(r["batch_size"]) for r in rows]


async def update_job(conn: Connection, job_id: str, **values: Any) -> None:
    """Set some of a job's mutable columns (stage, min cost, counters, rng state)."""
    if "rng_state" in values and values["rng_state"] is not None:
        values["rng_state"] = json.dumps(values["rng_state"])
    names = list(values)
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(names, start=2))
    await conn.execute(
        f"UPDATE job SET {assignments} WHERE job_id = $1", job_id, *[values[n] for n in names]
    )


async def delete_job(conn: Connection, job_id: str) -> bool:
    """Delete a job; its batch sizes, trials and arms go by cascade."""
    return await conn.execute("DELETE FROM job WHERE job_id = $1", job_id) > 0


async def list_jobs(
    conn: Connection, *, prefix: str | None, after: str | None, limit: int
) -> list[JobRow]:
    # Only the filters given, so that each shape has its own plan and index
    # (ix_job_job_id_prefix, or the primary key) instead of an OR-IS-NULL scan.
    where, args = _filters(("job_id_prefix", "=", prefix), ("job_id", ">", after))
    rows = await conn.fetch(
        f"SELECT {_JOB_SELECT} FROM job{where} ORDER BY job_id LIMIT ${len(args) + 1}",
        *args,
        limit,
    )
    return [JobRow.from_row(r) for r in rows]


def _filters(*conditions: tuple[str, str, Any], first: int = 1) -> tuple[str, list[Any]]:
    """A WHERE clause of the conditions whose value is not None, and its arguments."""
    clauses, args = [], []
    for column, operator, value in conditions:
        if value is not None:
            args.append(value)
            clauses.append(f"{column} {operator} ${first + len(args) - 1}")
    return (" WHERE " + " AND ".join(clauses) if clauses else ""), args


# ------------------------------------------------------------------ trials


async def insert_trial(
    conn: Connection, job_id: str, number: int, batch_size: int, trial_type: str, now: datetime
) -> None:
    await conn.execute(
        "INSERT INTO trial (job_id, trial_number, batch_size, type, status, start_timestamp)"
        " VALUES ($1, $2, $3, $4, 'Dispatched', $5)",
        job_id,
        number,
        batch_size,
        trial_type,
        now,
    )


async def finish_trial(
    conn: Connection,
    trial: TrialRow,
    *,
    time: float,
    energy: float,
    cost: float,
    converged: bool,
    now: datetime,
) -> None:
    await conn.execute(
        "UPDATE trial SET status = 'Succeeded', end_timestamp = $3, time = $4, energy = $5,"
        " cost = $6, converged = $7 WHERE job_id = $1 AND trial_number = $2",
        trial.job_id,
        trial.trial_number,
        max(now, trial.start_timestamp),
        time,
        energy,
        cost,
        converged,
    )


async def fail_trial(conn: Connection, trial: TrialRow, now: datetime) -> None:
    await conn.execute(
        "UPDATE trial SET status = 'Failed', end_timestamp = $3"
        " WHERE job_id = $1 AND trial_number = $2",
        trial.job_id,
        trial.trial_number,
        max(now, trial.start_timestamp),
    )


async def expire_explorations(
    conn: Connection, job_id: str, *, started_before: datetime, now: datetime
) -> int:
    """Fail running explorations started before a time; their clients are gone.

    An exploration that never ends blocks its pruning round forever (every
    request gets a Concurrent trial instead), so a stale one is given up.
    """
    return await conn.execute(
        "UPDATE trial SET status = 'Failed', end_timestamp = $3 WHERE job_id = $1"
        " AND type = 'Exploration' AND status = 'Dispatched' AND start_timestamp < $2",
        job_id,
        started_before,
        now,
    )


async def list_trials(
    conn: Connection,
    job_id: str,
    *,
    status: str | None,
    trial_type: str | None,
    after: int | None,
    limit: int,
) -> list[TrialRow]:
    # A filter on status uses ix_trial_job_id_status, one on type
    # ix_trial_job_id_type_status, none the primary key; all in trial order.
    where, args = _filters(
        ("job_id", "=", job_id),
        ("status", "=", status),
        ("type", "=", trial_type),
        ("trial_number", ">", after),
    )
    rows = await conn.fetch(
        f"SELECT {_TRIAL_SELECT} FROM trial{where} ORDER BY trial_number LIMIT ${len(args) + 1}",
        *args,
        limit,
    )
    return [TrialRow.from_row(r) for r in rows]


async def explorations(conn: Connection, job_id: str) -> dict[int, list[Exploration]]:
    """Non-Failed Exploration trials per batch size, in trial order.

    At most num_pruning_rounds per batch size: a (batch size, round) pair
    is dispatched again only after its previous exploration Failed.
    """
    rows = await conn.fetch(
        "SELECT trial_number, batch_size, status, converged, cost FROM trial"
        " WHERE job_id = $1 AND type = 'Exploration' AND status IN ('Dispatched', 'Succeeded')"
        " ORDER BY trial_number",
        job_id,
    )
    by_batch_size: dict[int, list[Exploration]] = defaultdict(list)
    for r in rows:
        by_batch_size[r["batch_size"]].append(
            Exploration(
                r["trial_number"],
                r["batch_size"],
                r["status"] == "Dispatched",
                _optional_bool(r["converged"]),
                r["cost"],
            )
        )
    return dict(by_batch_size)


async def recent_costs(conn: Connection, job_id: str, batch_size: int, limit: int) -> list[float]:
    """Costs of the last ``limit`` Succeeded trials of a batch size, oldest first."""
    rows = await conn.fetch(
        "SELECT cost FROM trial WHERE job_id = $1 AND batch_size = $2 AND status = 'Succeeded'"
        " ORDER BY trial_number DESC LIMIT $3",
        job_id,
        batch_size,
        limit,
    )
    return [float(r["cost"]) for r in reversed(rows)]


# --------------------------------------------------- reward stats and arms


async def add_reward(conn: Connection, job_id: str, batch_size: int, value: float) -> RewardStats:
    """Fold one reward into the batch size's running statistics."""
    row = await conn.fetchrow(
        "SELECT reward_count, reward_mean, reward_m2 FROM batch_size"
        " WHERE job_id = $1 AND batch_size = $2",
        job_id,
        batch_size,
    )
    assert row is not None, "a trial's batch size has a batch_size row (foreign key)"
    stats = RewardStats(row["reward_count"], row["reward_mean"], row["reward_m2"]).add(value)
    await conn.execute(
        "UPDATE batch_size SET reward_count = $3, reward_mean = $4, reward_m2 = $5"
        " WHERE job_id = $1 AND batch_size = $2",
        job_id,
        batch_size,
        stats.count,
        stats.mean,
        stats.m2,
    )
    return stats


def _arm(row: Row) -> ArmPosterior:
    return ArmPosterior(
        row["batch_size"],
        row["param_mean"],
        row["param_precision"],
        row["reward_precision"],
        row["num_observations"],
    )


async def arms(conn: Connection, job_id: str) -> list[ArmPosterior]:
    rows = await conn.fetch(
        "SELECT batch_size, param_mean, param_precision, reward_precision, num_observations"
        " FROM arm WHERE job_id = $1 ORDER BY batch_size",
        job_id,
    )
    return [_arm(r) for r in rows]


async def is_arm(conn: Connection, job_id: str, batch_size: int) -> bool:
    found = await conn.fetchval(
        "SELECT 1 FROM arm WHERE job_id = $1 AND batch_size = $2", job_id, batch_size
    )
    return found is not None


def _arm_values(job_id: str, arm: ArmPosterior) -> tuple[Any, ...]:
    return (
        job_id,
        arm.batch_size,
        arm.param_mean,
        arm.param_precision,
        arm.reward_precision,
        arm.num_observations,
    )


async def insert_arms(conn: Connection, job_id: str, new_arms: Sequence[ArmPosterior]) -> None:
    await conn.executemany(
        "INSERT INTO arm (job_id, batch_size, param_mean, param_precision, reward_precision,"
        " num_observations) VALUES ($1, $2, $3, $4, $5, $6)",
        [_arm_values(job_id, a) for a in new_arms],
    )


async def save_arm(conn: Connection, job_id: str, arm: ArmPosterior) -> None:
    await conn.execute(
        "UPDATE arm SET param_mean = $3, param_precision = $4, reward_precision = $5,"
        " num_observations = $6 WHERE job_id = $1 AND batch_size = $2",
        *_arm_values(job_id, arm),
    )


# --------------------------------------------------------------- readiness


async def schema_revision(conn: Connection) -> str | None:
    """The Alembic revision the database is at (None before any migration)."""
    try:
        value = await conn.fetchval("SELECT version_num FROM alembic_version")
    except Exception as exc:  # the table does not exist yet: not migrated
        if "alembic_version" in str(exc):
            return None
        raise
    return None if value is None else str(value)
