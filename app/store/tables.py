"""The schema: tables, their column types and constraints (SQLAlchemy Core).

Constraints make the invalid states of SPEC section 3 impossible to store;
every query a request makes has an index (see the store's modules). Alembic's
migrations are checked against this metadata (tests/test_migrations.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Column,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
)

from app.bandit import FailureReason, Policy, Stage, TrialStatus, TrialType
from app.roles import Role

# Deterministic constraint names, so that migrations can drop and rename them.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware timestamps on both databases, always UTC.

    PostgreSQL keeps the zone (timestamptz). SQLite has none: values are
    stored as UTC text in SQLAlchemy's one format and read back as aware UTC.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware one (UTC)")
        value = value.astimezone(UTC)
        # SQLite stores text: drop the zone so that every row has the same format.
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        # asyncpg already returns aware UTC datetimes for timestamptz.
        if dialect.name == "postgresql":
            return None
        return super().result_processor(dialect, coltype)


class EnumText(TypeDecorator[StrEnum]):
    """A StrEnum stored as its text: rows read back as the enum's members."""

    impl = String(16)
    cache_ok = True

    def __init__(self, enum: type[StrEnum]) -> None:
        super().__init__()
        self.enum = enum

    def process_bind_param(self, value: StrEnum | str | None, dialect: Dialect) -> str | None:
        return None if value is None else str(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> StrEnum | None:
        return None if value is None else self.enum(value)

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        # One dict lookup per value; NULL comes from outer joins.
        members: dict[str | None, StrEnum | None] = {m.value: m for m in self.enum}
        members[None] = None
        return members.__getitem__


def _one_of(column: str, enum: type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in enum)})"


def _result_matches_status() -> str:
    """Dispatched: running, no result. Failed: ended, no result. Succeeded: a whole result."""
    result = ("time", "energy", "cost", "converged")
    none = " AND ".join(f"{c} IS NULL" for c in result)
    whole = " AND ".join(f"{c} IS NOT NULL" for c in result)
    return (
        f"(status = '{TrialStatus.DISPATCHED}' AND end_timestamp IS NULL AND {none})"
        f" OR (status = '{TrialStatus.FAILED}' AND end_timestamp IS NOT NULL AND {none})"
        f" OR (status = '{TrialStatus.SUCCEEDED}' AND end_timestamp IS NOT NULL AND {whole})"
    )


job = Table(
    "job",
    metadata,
    # The registered specification (app.schemas.JobSpec), never changed after.
    Column("job_id", String(256), primary_key=True),
    Column("job_id_prefix", String(256), nullable=False),
    Column("default_batch_size", Integer, nullable=False),
    Column("eta_knob", Float, nullable=False),
    Column("beta_knob", Float),
    Column("target_metric", Float, nullable=False),
    Column("higher_is_better_metric", Boolean, nullable=False),
    Column("max_epochs", Integer, nullable=False),
    Column("num_pruning_rounds", Integer, nullable=False),
    Column("window_size", Integer, nullable=False),
    Column("mab_prior_mean", Float, nullable=False),
    Column("mab_prior_precision", Float, nullable=False),
    Column("mab_num_explorations", Integer, nullable=False),
    Column("mab_seed", BigInteger),
    Column("max_power", Float, nullable=False),
    Column("number_of_gpus", Integer, nullable=False),
    Column("gpu_model", String(256), nullable=False),
    # Resolved at creation (BSO_DEFAULT_POLICY when the registration has none).
    # The default serves the release before the column, which does not write it.
    Column("policy", EnumText(Policy), nullable=False, server_default=Policy.ZEUS.value),
    # Its job group (docs/SPEC.md section 12), resolved at creation; null: none.
    Column("group", String(256)),
    # What the job has learnt so far.
    Column("stage", EnumText(Stage), nullable=False),
    Column("min_cost", Float),
    Column("min_cost_batch_size", Integer, nullable=False),
    # Trial numbers are allocated from this counter under the job's row lock
    # (never max()+1, which two requests can compute at once).
    Column("next_trial_number", Integer, nullable=False),
    # numpy bit generator state of a seeded job, saved after every draw.
    Column("rng_state", JSON),
    # A group's job: where its pruning walk starts, fixed by its first dispatch.
    Column("start_batch_size", Integer),
    Column("created_at", UTCDateTime(), nullable=False),
    Column("updated_at", UTCDateTime(), nullable=False),
    CheckConstraint(_one_of("stage", Stage), name="stage"),
    CheckConstraint(_one_of("policy", Policy), name="policy"),
    CheckConstraint("eta_knob >= 0 AND eta_knob <= 1", name="eta_knob"),
    CheckConstraint("beta_knob IS NULL OR beta_knob > 0", name="beta_knob"),
    CheckConstraint("max_epochs > 0", name="max_epochs"),
    CheckConstraint("num_pruning_rounds >= 0", name="num_pruning_rounds"),
    CheckConstraint("window_size >= 0", name="window_size"),
    CheckConstraint("mab_prior_precision >= 0", name="mab_prior_precision"),
    CheckConstraint("mab_num_explorations >= 0", name="mab_num_explorations"),
    CheckConstraint("mab_seed IS NULL OR mab_seed >= 0", name="mab_seed"),
    CheckConstraint("max_power > 0", name="max_power"),
    CheckConstraint("number_of_gpus > 0", name="number_of_gpus"),
    CheckConstraint("default_batch_size > 0", name="default_batch_size"),
    CheckConstraint("min_cost_batch_size > 0", name="min_cost_batch_size"),
    CheckConstraint("min_cost IS NULL OR min_cost >= 0", name="min_cost"),
    CheckConstraint("next_trial_number >= 1", name="next_trial_number"),
    CheckConstraint("length(job_id) > 0", name="job_id_not_empty"),
    CheckConstraint("length(gpu_model) > 0", name="gpu_model_not_empty"),
    CheckConstraint('length("group") > 0', name="group_not_empty"),
    # GET /jobs?job_id_prefix=...: keyset pages of one prefix's jobs.
    Index("ix_job_job_id_prefix", "job_id_prefix", "job_id"),
    # A group's members: its read side's pages, and a first dispatch's siblings.
    Index("ix_job_group", "group", "job_id"),
)

# One of a job's batch sizes, with running statistics of its rewards: they
# cover every Succeeded trial of it, so that an arm refit with window_size = 0
# never re-reads the job's history.
batch_size = Table(
    "batch_size",
    metadata,
    Column("job_id", String(256), ForeignKey("job.job_id", ondelete="CASCADE"), primary_key=True),
    Column("batch_size", Integer, primary_key=True),
    Column("reward_count", Integer, nullable=False),
    Column("reward_mean", Float, nullable=False),
    Column("reward_m2", Float, nullable=False),
    # The fewest epochs a converged trial of it needed (predictive policy; null: none yet).
    Column("min_converged_epochs", Integer),
    # A group's job: the predicted cost its last final report recorded (group rule 2).
    Column("predicted_cost", Float),
    CheckConstraint("batch_size > 0", name="batch_size"),
    CheckConstraint(
        "min_converged_epochs IS NULL OR min_converged_epochs >= 1", name="min_converged_epochs"
    ),
    CheckConstraint("reward_count >= 0", name="reward_count"),
    CheckConstraint("reward_m2 >= 0", name="reward_m2"),
)

# A job group: jobs (one per GPU type, say) that share what a batch size needs
# to converge. They agree on what converged means; rows are never deleted.
job_group = Table(
    "job_group",
    metadata,
    Column("name", String(256), primary_key=True),
    Column("target_metric", Float, nullable=False),
    Column("higher_is_better_metric", Boolean, nullable=False),
    Column("max_epochs", Integer, nullable=False),
    Column("created_at", UTCDateTime(), nullable=False),
    CheckConstraint("length(name) > 0", name="name_not_empty"),
    CheckConstraint("max_epochs > 0", name="max_epochs"),
)

# What a group knows of one batch size, over all its jobs' GPUs: updated by
# atomic increments, so that final reports of different jobs (holding
# different job locks) never lose one another's update.
group_batch_size = Table(
    "group_batch_size",
    metadata,
    Column(
        "group_name",
        String(256),
        ForeignKey("job_group.name", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("batch_size", Integer, primary_key=True),
    Column("runs", Integer, nullable=False),  # final reports
    Column("exhausted", Integer, nullable=False),  # of those, max_epochs without the target
    Column("converged", Integer, nullable=False),
    Column("min_epochs", Integer),  # fewest epochs of a converged run; null: none yet
    Column("total_epochs", BigInteger, nullable=False),  # of converged runs
    CheckConstraint("batch_size > 0", name="batch_size"),
    CheckConstraint(
        "runs >= 0 AND exhausted >= 0 AND converged >= 0 AND exhausted + converged <= runs",
        name="counts",
    ),
    CheckConstraint("min_epochs IS NULL OR min_epochs >= 1", name="min_epochs"),
    CheckConstraint("total_epochs >= 0", name="total_epochs"),
)

# One recurrence of a job, trained with one batch size.
trial = Table(
    "trial",
    metadata,
    Column("job_id", String(256), ForeignKey("job.job_id", ondelete="CASCADE"), primary_key=True),
    Column("trial_number", Integer, primary_key=True),
    Column("batch_size", Integer, nullable=False),
    Column("type", EnumText(TrialType), nullable=False),
    Column("status", EnumText(TrialStatus), nullable=False),
    Column("start_timestamp", UTCDateTime(), nullable=False),
    Column("end_timestamp", UTCDateTime()),
    Column("time", Float),
    Column("energy", Float),
    Column("cost", Float),
    Column("converged", Boolean),
    # The trial's lease (app/bandit/lease.py): its dispatch or a later report.
    Column("lease_renewed_at", UTCDateTime(), nullable=False),
    # Why a Failed trial failed (null for trials failed before this was kept).
    Column("failure_reason", EnumText(FailureReason)),
    # Predictive policy: an exploration's 0-based pruning round (set at dispatch),
    # and a running trial's previous report (set by its non-final reports).
    Column("pruning_round", Integer),
    Column("last_epoch", Integer),
    Column("last_cost", Float),
    # The Idempotency-Key its dispatch was sent with (null: none); one trial of a
    # job holds a key at a time (a key reused after its trial's lease moves on).
    Column("idempotency_key", String(255)),
    # A trial's batch size is one of its job's.
    ForeignKeyConstraint(
        ["job_id", "batch_size"],
        ["batch_size.job_id", "batch_size.batch_size"],
        ondelete="CASCADE",
    ),
    CheckConstraint("trial_number >= 1", name="trial_number"),
    CheckConstraint(_one_of("type", TrialType), name="type"),
    CheckConstraint(_one_of("status", TrialStatus), name="status"),
    CheckConstraint(
        "end_timestamp IS NULL OR end_timestamp >= start_timestamp", name="end_after_start"
    ),
    CheckConstraint(_result_matches_status(), name="result_matches_status"),
    CheckConstraint(
        f"failure_reason IS NULL OR (status = '{TrialStatus.FAILED}'"
        f" AND {_one_of('failure_reason', FailureReason)})",
        name="failure_reason",
    ),
    CheckConstraint("pruning_round IS NULL OR pruning_round >= 0", name="pruning_round"),
    CheckConstraint(
        "(last_epoch IS NULL AND last_cost IS NULL)"
        " OR (last_epoch >= 1 AND last_cost IS NOT NULL AND last_cost >= 0)",
        name="last_report",
    ),
    CheckConstraint("time IS NULL OR time >= 0", name="time"),
    CheckConstraint("energy IS NULL OR energy >= 0", name="energy"),
    # The pruning walk: non-Failed explorations of a job, in trial order.
    Index("ix_trial_job_id_type_status", "job_id", "type", "status", "trial_number"),
    # Arm refits with a window, and listing trials by status.
    Index("ix_trial_job_id_batch_size_status", "job_id", "batch_size", "status", "trial_number"),
    Index("ix_trial_job_id_status", "job_id", "status", "trial_number"),
    # The lease sweep: Dispatched trials renewed before a cutoff, across jobs.
    Index("ix_trial_status_lease_renewed_at", "status", "lease_renewed_at"),
    # A dispatch's key: its retries find the trial it made (NULLs never collide).
    Index("ix_trial_job_id_idempotency_key", "job_id", "idempotency_key", unique=True),
)

# The bandit's belief about one surviving batch size of a job.
arm = Table(
    "arm",
    metadata,
    Column("job_id", String(256), primary_key=True),
    Column("batch_size", Integer, primary_key=True),
    Column("param_mean", Float, nullable=False),
    # May be +Infinity (all observed rewards equal); both databases store it.
    Column("param_precision", Float, nullable=False),
    Column("reward_precision", Float, nullable=False),
    Column("num_observations", Integer, nullable=False),
    ForeignKeyConstraint(
        ["job_id", "batch_size"],
        ["batch_size.job_id", "batch_size.batch_size"],
        ondelete="CASCADE",
    ),
    CheckConstraint("param_precision >= 0", name="param_precision"),
    CheckConstraint("reward_precision >= 0", name="reward_precision"),
    CheckConstraint("num_observations >= 0", name="num_observations"),
)

# An API token (BSO_AUTH=required). A token reads ``bso_<token_id>_<secret>``:
# the id finds this one row, and only a salted hash of the secret is kept
# (app/tokens.py says which and why). Rows are never deleted, so a name
# names one token forever and revoked ones stay listed.
token = Table(
    "token",
    metadata,
    Column("token_id", String(16), primary_key=True),
    Column("name", String(64), nullable=False, unique=True),
    Column("role", EnumText(Role), nullable=False),
    # A trainer's job_id_prefixes, a JSON list of strings; empty: every prefix.
    Column("prefixes", JSON, nullable=False),
    Column("salt", String(32), nullable=False),  # hex
    Column("secret_hash", String(64), nullable=False),  # hex HMAC-SHA256
    Column("created_at", UTCDateTime(), nullable=False),
    Column("revoked_at", UTCDateTime()),
    CheckConstraint(_one_of("role", Role), name="role"),
    CheckConstraint("length(name) > 0", name="name_not_empty"),
    CheckConstraint("revoked_at IS NULL OR revoked_at >= created_at", name="revoked_after_created"),
)
