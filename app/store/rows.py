"""What every store module shares: row shapes, the algorithm's view of a row, statement helpers.

The store (this package) is the only place that knows SQL: statements built once from the
tables (tables.py), one module per thing stored. Every statement is bounded by the job's
configuration, never by its history: lookups by primary key, the pruning walk's non-Failed
explorations, the last ``window_size`` results of one batch size, and keyset pages. Each one
has an index (tables.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields
from typing import Any

from sqlalchemy import Column, Row, RowMapping, Select, Table, and_, bindparam
from sqlalchemy.dialects import postgresql, sqlite

from app.bandit import ArmPosterior, JobParams, Lease, TrialStatus
from app.schemas import TrialRead
from app.store.tables import UTCDateTime, trial

JobRow = Row[Any]  # a row of the job table (attributes named as its columns)

PARAM_FIELDS = tuple(f.name for f in fields(JobParams) if f.name != "batch_sizes")


def job_params(row: JobRow, batch_sizes: Sequence[int] = ()) -> JobParams:
    """The algorithm's view of a job."""
    return JobParams(batch_sizes=tuple(batch_sizes), **{f: getattr(row, f) for f in PARAM_FIELDS})


# The predictive policy's bookkeeping and the dispatch's key are not part of the read API.
_TRIAL_READ_COLUMNS = tuple(
    c.name
    for c in trial.c
    if c.name
    not in {"lease_renewed_at", "pruning_round", "last_epoch", "last_cost", "idempotency_key"}
)


def trial_read(mapping: RowMapping, prefix: str = "", lease: Lease | None = None) -> TrialRead:
    """A trial row as the read API shows it; with ``lease``, a running one's expiry."""
    values = {name: mapping[prefix + name] for name in _TRIAL_READ_COLUMNS}
    if lease is not None and values["status"] == TrialStatus.DISPATCHED:
        values["lease_expires_at"] = lease.expires_at(mapping[prefix + "lease_renewed_at"])
    # Validated, not model_construct(): pydantic-core checks these dozen
    # values faster than model_construct() copies them in Python (31k
    # instructions per hot-loop request, docs/benchmarks.md, issue 24).
    return TrialRead.model_validate(values)


def arm_posterior(mapping: RowMapping) -> ArmPosterior:
    return ArmPosterior(
        mapping["batch_size"],
        mapping["param_mean"],
        mapping["param_precision"],
        mapping["reward_precision"],
        mapping["num_observations"],
    )


def insert_if_absent(table: Table, key: Column[Any] | None = None) -> dict[str, Any]:
    """``INSERT ... ON CONFLICT DO NOTHING [RETURNING key]`` in each dialect's spelling."""
    statements = {
        dialect.__name__.rsplit(".", 1)[-1]: dialect.insert(table).on_conflict_do_nothing()
        for dialect in (postgresql, sqlite)
    }
    if key is None:
        return statements
    return {name: statement.returning(key) for name, statement in statements.items()}


def page(statement: Select[Any], *filters: tuple[Any, Any, Any]) -> Select[Any]:
    """Only the filters ``(column, operator, value)`` whose value is given.

    Each shape then uses its own index instead of an OR-IS-NULL scan.
    """
    for column, compare, value in filters:
        if value is not None:
            statement = statement.where(compare(column, value))
    return statement


# Key parameters are named k_*: a column's own name is reserved in UPDATE ... SET.
TRIAL_KEY = and_(
    trial.c.job_id == bindparam("k_job_id"), trial.c.trial_number == bindparam("k_number")
)
NOW = bindparam("now", type_=UTCDateTime())
