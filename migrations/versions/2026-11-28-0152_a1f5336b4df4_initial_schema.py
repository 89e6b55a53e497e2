"""Initial schema: jobs, their batch sizes, trials and bandit arms.

Revision ID: a1f5336b4df4
Revises:
Create Date: 2026-11-28 01:52:40.561302+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "a1f5336b4df4"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "job",
        sa.Column("job_id", sa.String(length=256), nullable=False),
        sa.Column("job_id_prefix", sa.String(length=256), nullable=False),
        sa.Column("default_batch_size", sa.Integer(), nullable=False),
        sa.Column("eta_knob", sa.Float(), nullable=False),
        sa.Column("beta_knob", sa.Float(), nullable=True),
        sa.Column("target_metric", sa.Float(), nullable=False),
        sa.Column("higher_is_better_metric", sa.Boolean(), nullable=False),
        sa.Column("max_epochs", sa.Integer(), nullable=False),
        sa.Column("num_pruning_rounds", sa.Integer(), nullable=False),
        sa.Column("window_size", sa.Integer(), nullable=False),
        sa.Column("mab_prior_mean", sa.Float(), nullable=False),
        sa.Column("mab_prior_precision", sa.Float(), nullable=False),
        sa.Column("mab_num_explorations", sa.Integer(), nullable=False),
        sa.Column("mab_seed", sa.BigInteger(), nullable=True),
        sa.Column("max_power", sa.Float(), nullable=False),
        sa.Column("number_of_gpus", sa.Integer(), nullable=False),
        sa.Column("gpu_model", sa.String(length=256), nullable=False),
        sa.Column("stage", sa.String(length=16), nullable=False),
        sa.Column("min_cost", sa.Float(), nullable=True),
        sa.Column("min_cost_batch_size", sa.Integer(), nullable=False),
        sa.Column("next_trial_number", sa.Integer(), nullable=False),
        sa.Column("rng_state", sa.JSON(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("stage IN ('Pruning', 'MAB')", name=op.f("ck_job_stage")),
        sa.CheckConstraint("beta_knob IS NULL OR beta_knob > 0", name=op.f("ck_job_beta_knob")),
        sa.CheckConstraint("default_batch_size > 0", name=op.f("ck_job_default_batch_size")),
        sa.CheckConstraint("eta_knob >= 0 AND eta_knob <= 1", name=op.f("ck_job_eta_knob")),
        sa.CheckConstraint("length(gpu_model) > 0", name=op.f("ck_job_gpu_model_not_empty")),
        sa.CheckConstraint("length(job_id) > 0", name=op.f("ck_job_job_id_not_empty")),
        sa.CheckConstraint("mab_num_explorations >= 0", name=op.f("ck_job_mab_num_explorations")),
        sa.CheckConstraint("mab_prior_precision >= 0", name=op.f("ck_job_mab_prior_precision")),
        sa.CheckConstraint("mab_seed IS NULL OR mab_seed >= 0", name=op.f("ck_job_mab_seed")),
        sa.CheckConstraint("max_epochs > 0", name=op.f("ck_job_max_epochs")),
        sa.CheckConstraint("max_power > 0", name=op.f("ck_job_max_power")),
        sa.CheckConstraint("min_cost IS NULL OR min_cost >= 0", name=op.f("ck_job_min_cost")),
        sa.CheckConstraint("min_cost_batch_size > 0", name=op.f("ck_job_min_cost_batch_size")),
        sa.CheckConstraint("next_trial_number >= 1", name=op.f("ck_job_next_trial_number")),
        sa.CheckConstraint("num_pruning_rounds >= 0", name=op.f("ck_job_num_pruning_rounds")),
        sa.CheckConstraint("number_of_gpus > 0", name=op.f("ck_job_number_of_gpus")),
        sa.CheckConstraint("window_size >= 0", name=op.f("ck_job_window_size")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_job")),
    )
    op.create_index("ix_job_job_id_prefix", "job", ["job_id_prefix", "job_id"], unique=False)

    op.create_table(
        "batch_size",
        sa.Column("job_id", sa.String(length=256), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("reward_count", sa.Integer(), nullable=False),
        sa.Column("reward_mean", sa.Float(), nullable=False),
        sa.Column("reward_m2", sa.Float(), nullable=False),
        sa.CheckConstraint("batch_size > 0", name=op.f("ck_batch_size_batch_size")),
        sa.CheckConstraint("reward_count >= 0", name=op.f("ck_batch_size_reward_count")),
        sa.CheckConstraint("reward_m2 >= 0", name=op.f("ck_batch_size_reward_m2")),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.job_id"], name=op.f("fk_batch_size_job_id_job"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "batch_size", name=op.f("pk_batch_size")),
    )
    op.create_table(
        "arm",
        sa.Column("job_id", sa.String(length=256), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("param_mean", sa.Float(), nullable=False),
        sa.Column("param_precision", sa.Float(), nullable=False),
        sa.Column("reward_precision", sa.Float(), nullable=False),
        sa.Column("num_observations", sa.Integer(), nullable=False),
        sa.CheckConstraint("num_observations >= 0", name=op.f("ck_arm_num_observations")),
        sa.CheckConstraint("param_precision >= 0", name=op.f("ck_arm_param_precision")),
        sa.CheckConstraint("reward_precision >= 0", name=op.f("ck_arm_reward_precision")),
        sa.ForeignKeyConstraint(
            ["job_id", "batch_size"],
            ["batch_size.job_id", "batch_size.batch_size"],
            name=op.f("fk_arm_job_id_batch_size_batch_size"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "batch_size", name=op.f("pk_arm")),
    )
    op.create_table(
        "trial",
        sa.Column("job_id", sa.String(length=256), nullable=False),
        sa.Column("trial_number", sa.Integer(), nullable=False),
        sa.Column("batch_size", sa.Integer(), nullable=False),
        sa.Column("type", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("start_timestamp", sa.DateTime(timezone=True), nullable=False),
        sa.Column("end_timestamp", sa.DateTime(timezone=True), nullable=True),
        sa.Column("time", sa.Float(), nullable=True),
        sa.Column("energy", sa.Float(), nullable=True),
        sa.Column("cost", sa.Float(), nullable=True),
        sa.Column("converged", sa.Boolean(), nullable=True),
        sa.CheckConstraint(
            "(status = 'Dispatched' AND end_timestamp IS NULL AND time IS NULL AND energy IS NULL AND cost IS NULL AND converged IS NULL)"
            " OR (status = 'Failed' AND end_timestamp IS NOT NULL AND time IS NULL AND energy IS NULL AND cost IS NULL AND converged IS NULL)"
            " OR (status = 'Succeeded' AND end_timestamp IS NOT NULL AND time IS NOT NULL AND energy IS NOT NULL AND cost IS NOT NULL AND converged IS NOT NULL)",
            name=op.f("ck_trial_result_matches_status"),
        ),
        sa.CheckConstraint(
            "status IN ('Dispatched', 'Succeeded', 'Failed')", name=op.f("ck_trial_status")
        ),
        sa.CheckConstraint(
            "type IN ('Exploration', 'Concurrent', 'MAB')", name=op.f("ck_trial_type")
        ),
        sa.CheckConstraint(
            "end_timestamp IS NULL OR end_timestamp >= start_timestamp",
            name=op.f("ck_trial_end_after_start"),
        ),
        sa.CheckConstraint("energy IS NULL OR energy >= 0", name=op.f("ck_trial_energy")),
        sa.CheckConstraint("time IS NULL OR time >= 0", name=op.f("ck_trial_time")),
        sa.CheckConstraint("trial_number >= 1", name=op.f("ck_trial_trial_number")),
        sa.ForeignKeyConstraint(
            ["job_id", "batch_size"],
            ["batch_size.job_id", "batch_size.batch_size"],
            name=op.f("fk_trial_job_id_batch_size_batch_size"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.job_id"], name=op.f("fk_trial_job_id_job"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "trial_number", name=op.f("pk_trial")),
    )
    op.create_index(
        "ix_trial_job_id_batch_size_status",
        "trial",
        ["job_id", "batch_size", "status", "trial_number"],
        unique=False,
    )
    op.create_index(
        "ix_trial_job_id_status", "trial", ["job_id", "status", "trial_number"], unique=False
    )
    op.create_index(
        "ix_trial_job_id_type_status",
        "trial",
        ["job_id", "type", "status", "trial_number"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_trial_job_id_type_status", table_name="trial")
    op.drop_index("ix_trial_job_id_status", table_name="trial")
    op.drop_index("ix_trial_job_id_batch_size_status", table_name="trial")
    op.drop_table("trial")
    op.drop_table("arm")
    op.drop_table("batch_size")
    op.drop_index("ix_job_job_id_prefix", table_name="job")
    op.drop_table("job")
