"""ORM tables: jobs, their batch sizes, trials and bandit arms.

Constraints make the invalid states of SPEC section 3 impossible to store;
every query a request makes has an index (see repository.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    String,
)
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, UTCDateTime

STAGES = ("Pruning", "MAB")
TRIAL_TYPES = ("Exploration", "Concurrent", "MAB")
TRIAL_STATUSES = ("Dispatched", "Succeeded", "Failed")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class Job(Base):
    """A recurring training job: its specification and learning state."""

    __tablename__ = "job"

    job_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    job_id_prefix: Mapped[str] = mapped_column(String(256))
    default_batch_size: Mapped[int] = mapped_column(Integer)
    eta_knob: Mapped[float] = mapped_column(Float)
    beta_knob: Mapped[float | None] = mapped_column(Float)
    target_metric: Mapped[float] = mapped_column(Float)
    higher_is_better_metric: Mapped[bool] = mapped_column(Boolean)
    max_epochs: Mapped[int] = mapped_column(Integer)
    num_pruning_rounds: Mapped[int] = mapped_column(Integer)
    window_size: Mapped[int] = mapped_column(Integer)
    mab_prior_mean: Mapped[float] = mapped_column(Float)
    mab_prior_precision: Mapped[float] = mapped_column(Float)
    mab_num_explorations: Mapped[int] = mapped_column(Integer)
    mab_seed: Mapped[int | None] = mapped_column(BigInteger)
    max_power: Mapped[float] = mapped_column(Float)
    number_of_gpus: Mapped[int] = mapped_column(Integer)
    gpu_model: Mapped[str] = mapped_column(String(256))

    stage: Mapped[str] = mapped_column(String(16))
    min_cost: Mapped[float | None] = mapped_column(Float)
    min_cost_batch_size: Mapped[int] = mapped_column(Integer)
    # Trial numbers are allocated from this counter under the job's row lock
    # (never max()+1, which two requests can compute at once).
    next_trial_number: Mapped[int] = mapped_column(Integer)
    # numpy bit generator state of a seeded job, saved after every draw.
    rng_state: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())

    __table_args__ = (
        CheckConstraint(_one_of("stage", STAGES), name="stage"),
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
        # GET /jobs?job_id_prefix=...: keyset pages of one prefix's jobs.
        Index("ix_job_job_id_prefix", "job_id_prefix", "job_id"),
    )


class BatchSize(Base):
    """One of a job's batch sizes, with running statistics of its rewards.

    The statistics cover every Succeeded trial of this batch size, so that an
    arm refit with window_size = 0 never re-reads the job's history.
    """

    __tablename__ = "batch_size"

    job_id: Mapped[str] = mapped_column(
        String(256), ForeignKey("job.job_id", ondelete="CASCADE"), primary_key=True
    )
    batch_size: Mapped[int] = mapped_column(Integer, primary_key=True)
    reward_count: Mapped[int] = mapped_column(Integer, default=0)
    reward_mean: Mapped[float] = mapped_column(Float, default=0.0)
    reward_m2: Mapped[float] = mapped_column(Float, default=0.0)

    __table_args__ = (
        CheckConstraint("batch_size > 0", name="batch_size"),
        CheckConstraint("reward_count >= 0", name="reward_count"),
        CheckConstraint("reward_m2 >= 0", name="reward_m2"),
    )


class Trial(Base):
    """One recurrence of a job trained with one batch size."""

    __tablename__ = "trial"

    job_id: Mapped[str] = mapped_column(
        String(256), ForeignKey("job.job_id", ondelete="CASCADE"), primary_key=True
    )
    trial_number: Mapped[int] = mapped_column(Integer, primary_key=True)
    batch_size: Mapped[int] = mapped_column(Integer)
    type: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    start_timestamp: Mapped[datetime] = mapped_column(UTCDateTime())
    end_timestamp: Mapped[datetime | None] = mapped_column(UTCDateTime())
    time: Mapped[float | None] = mapped_column(Float)
    energy: Mapped[float | None] = mapped_column(Float)
    cost: Mapped[float | None] = mapped_column(Float)
    converged: Mapped[bool | None] = mapped_column(Boolean)

    __table_args__ = (
        # A trial's batch size is one of its job's.
        ForeignKeyConstraint(
            ["job_id", "batch_size"],
            ["batch_size.job_id", "batch_size.batch_size"],
            ondelete="CASCADE",
        ),
        CheckConstraint("trial_number >= 1", name="trial_number"),
        CheckConstraint(_one_of("type", TRIAL_TYPES), name="type"),
        CheckConstraint(_one_of("status", TRIAL_STATUSES), name="status"),
        CheckConstraint(
            "end_timestamp IS NULL OR end_timestamp >= start_timestamp", name="end_after_start"
        ),
        # Dispatched: running, no result. Failed: ended without a result.
        # Succeeded: ended with a complete result.
        CheckConstraint(
            "(status = 'Dispatched' AND end_timestamp IS NULL AND time IS NULL AND energy IS NULL"
            " AND cost IS NULL AND converged IS NULL)"
            " OR (status = 'Failed' AND end_timestamp IS NOT NULL AND time IS NULL"
            " AND energy IS NULL AND cost IS NULL AND converged IS NULL)"
            " OR (status = 'Succeeded' AND end_timestamp IS NOT NULL AND time IS NOT NULL"
            " AND energy IS NOT NULL AND cost IS NOT NULL AND converged IS NOT NULL)",
            name="result_matches_status",
        ),
        CheckConstraint("time IS NULL OR time >= 0", name="time"),
        CheckConstraint("energy IS NULL OR energy >= 0", name="energy"),
        # The pruning walk: non-Failed explorations of a job, in trial order.
        Index("ix_trial_job_id_type_status", "job_id", "type", "status", "trial_number"),
        # Arm refits with a window, and listing trials by status.
        Index(
            "ix_trial_job_id_batch_size_status", "job_id", "batch_size", "status", "trial_number"
        ),
        Index("ix_trial_job_id_status", "job_id", "status", "trial_number"),
    )


class Arm(Base):
    """The bandit's belief about one surviving batch size of a job."""

    __tablename__ = "arm"

    job_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    batch_size: Mapped[int] = mapped_column(Integer, primary_key=True)
    param_mean: Mapped[float] = mapped_column(Float)
    # May be +Infinity (all observed rewards equal); both databases store it.
    param_precision: Mapped[float] = mapped_column(Float)
    reward_precision: Mapped[float] = mapped_column(Float)
    num_observations: Mapped[int] = mapped_column(Integer)

    __table_args__ = (
        ForeignKeyConstraint(
            ["job_id", "batch_size"],
            ["batch_size.job_id", "batch_size.batch_size"],
            ondelete="CASCADE",
        ),
        CheckConstraint("param_precision >= 0", name="param_precision"),
        CheckConstraint("reward_precision >= 0", name="reward_precision"),
        CheckConstraint("num_observations >= 0", name="num_observations"),
    )
